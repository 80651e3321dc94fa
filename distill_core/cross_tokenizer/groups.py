"""A model's distribution over each aligned group, by chaining its token probabilities.

Row ``t`` of the logits is the model's distribution for token ``t`` of the aligned sequence (for a
causal LM: the logits shifted by one, ``logits[:, :-1]`` against ``input_ids[:, 1:]``). For a group
of tokens ``x_1 .. x_n`` at rows ``t_1 .. t_n`` the chained group vector over the vocabulary is::

    q_g(v) = p(v | row t_1) · Π_{k=2..n} p(x_k | row t_k)

the distribution of the group's first token, scaled by the probability the model gives the group's
actual continuation. Its entry at ``x_1`` is the model's probability of the whole group; the vector
sums to the continuation's probability (1 for a one-token group, so one-token groups give the
ordinary token distribution back). Computed in log space: ``log q_g = log p(· | t_1) + Σ_{k≥2} log
p(x_k | t_k)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_log_probs(log_probs: Tensor, token_ids: Tensor, group_ids: Tensor, max_groups: int) -> Tensor:
    """Return (B, G, V) chained log-probabilities of each group (see the module docstring).

    :param log_probs: (B, L, V) log-probabilities (log_softmax of the logits, temperature applied).
    :param token_ids: (B, L) the tokens each row's distribution is for.
    :param group_ids: (B, L) the group of each token, -1 for none.
    :param max_groups: G; groups past an example's count come back as its row 0's distribution
        (finite, to be masked by the caller).
    """
    batch, length, _ = log_probs.shape
    grouped = group_ids >= 0
    column = torch.where(grouped, group_ids, torch.full_like(group_ids, max_groups))  # spare column for "none"
    positions = torch.arange(length, device=log_probs.device).expand(batch, length)
    first = torch.full((batch, max_groups + 1), length, dtype=torch.int64, device=log_probs.device)
    first = first.scatter_reduce(1, column, positions, reduce="amin")[:, :max_groups]
    first = torch.where(first < length, first, torch.zeros_like(first))
    chosen = log_probs.gather(2, token_ids.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (B, L)
    is_first = grouped & (positions == first.gather(1, group_ids.clamp_min(0)))
    continuation = torch.where(grouped & ~is_first, chosen, torch.zeros_like(chosen))
    continuation_sum = torch.zeros(batch, max_groups + 1, dtype=log_probs.dtype, device=log_probs.device)
    continuation_sum = continuation_sum.scatter_add(1, column, continuation)[:, :max_groups]
    first_rows = log_probs.gather(1, first.unsqueeze(-1).expand(-1, -1, log_probs.shape[-1]))
    return first_rows + continuation_sum.unsqueeze(-1)


__all__ = ["group_log_probs"]
