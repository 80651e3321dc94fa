"""Importance scores as pure functions of activations: tensors in, per-sample statistics out.

Depth, block influence (ShortGPT, Men et al. 2024, "ShortGPT: Layers in Large Language Models are
More Redundant Than You Expect", eq. 1): for layer ``i`` with input hidden states ``X_i`` and output
``X_{i+1}``,

    BI_i = 1 - E_{X, t} [ X_{i,t} . X_{i+1,t} / (||X_{i,t}|| ||X_{i+1,t}||) ]

the expectation over every valid token ``t`` of the calibration text. A layer that changes its
input little (the identity: BI = 0) is the one to drop.

Width, activation importance (Minitron: Muralidharan et al. 2024, "Compact Language Models via
Pruning and Knowledge Distillation", §2.2; Sreenivas et al. 2024, "LLM Pruning and Distillation in
Practice"): a head's score is the L2 norm of its attention output ``Attn(X W_Q,i, X W_K,i, X W_V,i)``
per token, a neuron's is its (absolute) intermediate activation, an embedding channel's is its
absolute value at the outputs of the layers' norms. Tokens are aggregated within a sample by the
mean over its valid tokens and samples by the L2 norm (Minitron's best-ranked "batch = L2,
sequence = mean" aggregation); here the L2 over samples is divided by sqrt(samples), a root mean
square, which ranks the same and stays comparable between calibration sets of different sizes.
"""

from __future__ import annotations

import torch

__all__ = ["block_influence_sums", "channel_means", "head_means"]


def _valid(mask: torch.Tensor | None, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Return a float (batch, length) mask, all ones when ``mask`` is None."""
    if mask is None:
        return torch.ones(shape[0], shape[1], device=device)
    if tuple(mask.shape) != tuple(shape[:2]):
        raise ValueError(f"Expected argument `mask` to have shape {tuple(shape[:2])} but got {tuple(mask.shape)}")
    return mask.to(device=device, dtype=torch.float32)


def block_influence_sums(inputs: torch.Tensor, outputs: torch.Tensor,
                         mask: torch.Tensor | None = None) -> tuple[float, int]:
    """Return the sum of ``1 - cos(input, output)`` over the valid tokens, and their count.

    :param inputs: a layer's input hidden states, (batch, length, hidden).
    :param outputs: its output hidden states, same shape.
    :param mask: (batch, length), 1 = a real token; None = every token.

    >>> x = torch.randn(2, 3, 4)
    >>> block_influence_sums(x, x)[1]
    6
    """
    if inputs.shape != outputs.shape:
        raise ValueError(f"Expected `inputs` and `outputs` of one shape but got {tuple(inputs.shape)} and "
                         f"{tuple(outputs.shape)}")
    valid = _valid(mask, inputs.shape, inputs.device)
    cosine = torch.nn.functional.cosine_similarity(inputs.float(), outputs.float(), dim=-1)
    return float(((1.0 - cosine) * valid).sum()), int(valid.sum())


def channel_means(activations: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return each sample's mean absolute activation per channel over its valid tokens, (batch, channels).

    :param activations: (batch, length, channels), e.g. an MLP's intermediate activation or a norm's output.
    """
    valid = _valid(mask, activations.shape, activations.device)
    totals = torch.einsum("bsc,bs->bc", activations.float().abs(), valid)
    return totals / valid.sum(dim=1, keepdim=True).clamp(min=1.0)


def head_means(attention_output: torch.Tensor, head_dim: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return each sample's mean per-token L2 norm of each head's output over its valid tokens, (batch, heads).

    :param attention_output: the heads' outputs concatenated, (batch, length, heads * head_dim): the
        input of the attention's output projection.
    """
    batch, length, width = attention_output.shape
    if width % head_dim:
        raise ValueError(f"Expected the attention output's width ({width}) to be a multiple of `head_dim` "
                         f"({head_dim})")
    norms = attention_output.float().reshape(batch, length, width // head_dim, head_dim).norm(dim=-1)
    valid = _valid(mask, attention_output.shape, attention_output.device)
    return torch.einsum("bsh,bs->bh", norms, valid) / valid.sum(dim=1, keepdim=True).clamp(min=1.0)
