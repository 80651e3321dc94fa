"""On-policy data for token-level KD (GKD): continuations sampled from the student, scored by the teacher.

A student trained only on fixed text (off-policy) never sees its own mistakes; at generation time
it conditions on what it wrote itself, a distribution its training never covered. GKD (Agarwal et
al., 2024, *On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes*)
mixes in batches whose continuations the student sampled, and lets the teacher score every token
of them: with probability ``lambda`` a batch is replaced by prompt + student continuation.

:class:`OnPolicySampler` is a ``batch_postprocessor`` for any distiller's ``train()``. The loop
calls it on each micro-batch before the teachers run, so the teacher sees the sampled batch, and
the student's current weights write it (the sampler holds the student itself)::

    sampler = OnPolicySampler(student, probability=0.5, prompt_length=64, max_new_tokens=64)
    distiller.train(optimizer, dataloader=loader, num_steps=200, batch_postprocessor=sampler)

The sampled batch holds ``input_ids``, ``attention_mask``, ``labels`` (and ``position_ids`` when a
prompt was padded). Its ``labels`` are -100 on the prompt and after the first end-of-sequence
token, and ``attention_mask`` is 0 after it, so the automatic causal-LM adaptor keeps exactly the
sampled tokens (the end-of-sequence token included: stopping is part of what the student learns).
Every other key of the incoming batch is dropped on purpose: an on-policy batch is no dataset
example. The sampler says so to the loop (``makes_new_examples = True``): with a teacher-output
cache, a sampled batch is neither looked up nor stored (the teachers run on it), while the batches
the coin leaves alone are served by the cache as usual.

The coin and the sampling draw from torch's global generator, which distill's checkpoints save
and restore, so a resumed run draws what the uninterrupted run would have.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distill_core.adaptors import IGNORE_INDEX
from distill_core.modules import unwrap

__all__ = ["OnPolicySampler", "SamplerStats", "mask_after_eos"]


@dataclass
class SamplerStats:
    """What a sampler did so far: batches seen and replaced, tokens sampled, seconds spent generating."""

    batches: int = 0
    sampled_batches: int = 0
    sampled_tokens: int = 0
    seconds: float = 0.0


def mask_after_eos(generated: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """Return a bool mask (B, N) of the generated tokens to keep: up to and including each row's first EOS.

    :param generated: sampled token ids (B, N), prompt excluded.
    :param eos_token_ids: the ids that end a sequence (none: every token is kept).

    >>> mask_after_eos(torch.tensor([[5, 2, 7], [5, 6, 7]]), [2]).tolist()
    [[True, True, False], [True, True, True]]
    """
    if not eos_token_ids:
        return torch.ones_like(generated, dtype=torch.bool)
    is_eos = torch.isin(generated, torch.tensor(list(eos_token_ids), device=generated.device))
    # tokens strictly after the first EOS: an EOS occurred at an earlier position of the row
    eos_before = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return ~eos_before


class OnPolicySampler:
    """Replace a batch's continuations by the student's own samples, with probability ``probability``.

    :param student: the model being trained (the sampler calls its ``generate``; wrappers such as DDP
        are looked through).
    :param probability: GKD's lambda, the fraction of batches made on-policy, in [0, 1].
    :param prompt_length: each row's first ``prompt_length`` real tokens are the prompt; the rest of
        the incoming row is discarded.
    :param max_new_tokens: tokens sampled after each prompt (fewer when every row ends early).
    :param temperature: sampling temperature (GKD samples at 1).
    :param top_k: sample among the ``top_k`` most likely tokens only; None: the whole vocabulary.
    :param eos_token_id: id(s) that end a sequence; None: the model's ``generation_config.eos_token_id``.
    :param pad_token_id: fills prompts shorter than ``prompt_length`` and rows after their end; None:
        the model's ``generation_config.pad_token_id``, else the first EOS id.
    """

    #: a batch this returns in place of the one it got is no dataset example: distill's loop runs the
    #: teachers on it instead of the teacher cache (any batch_postprocessor may declare this)
    makes_new_examples = True

    def __init__(
        self,
        student: nn.Module,
        *,
        probability: float,
        prompt_length: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"Expected argument `probability` to be in [0, 1] but got {probability}")
        for name, value in (("prompt_length", prompt_length), ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected argument `{name}` to be a positive integer but got {value!r}")
        if not temperature > 0:
            raise ValueError(f"Expected argument `temperature` to be positive but got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"Expected argument `top_k` to be None or a positive integer but got {top_k}")
        model = unwrap(student)
        if not callable(getattr(model, "generate", None)):
            raise TypeError(
                f"OnPolicySampler samples with the student's generate(), which {type(model).__name__} lacks; "
                f"use a Hugging Face generative model (or one with a compatible generate method)"
            )
        self.student = student
        self.probability = probability
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        generation_config = getattr(model, "generation_config", None)
        if eos_token_id is None:
            eos_token_id = getattr(generation_config, "eos_token_id", None)
        self.eos_token_ids: list[int] = (
            [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        )
        if pad_token_id is None:
            pad_token_id = getattr(generation_config, "pad_token_id", None)
        if pad_token_id is None:
            if not self.eos_token_ids:
                raise ValueError("OnPolicySampler needs pad_token_id= (the model names neither a pad nor an EOS token)")
            pad_token_id = self.eos_token_ids[0]
        self.pad_token_id = int(pad_token_id)
        self.stats = SamplerStats()

    def __call__(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """Return ``batch`` unchanged, or (with probability ``probability``) an on-policy batch made from it."""
        self.stats.batches += 1
        if self.probability <= 0.0 or (self.probability < 1.0 and float(torch.rand(())) >= self.probability):
            return batch
        return self.sample(batch)

    def prompts(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the left-padded prompts (B, P) and their attention mask, from each row's first real tokens.

        Left padding makes every row's continuation start at the same column, as batched generation needs.
        """
        input_ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(
                "OnPolicySampler needs batches that are mappings with 'input_ids' of shape (batch, length), got "
                f"{type(batch).__name__}" + ("" if input_ids is None else f" with input_ids {tuple(input_ids.shape)}")
            )
        input_ids = input_ids.cpu()  # a host batch already (the loop samples before moving it): no copy
        real = batch.get("attention_mask")
        real = torch.ones_like(input_ids, dtype=torch.bool) if real is None else real.cpu().bool()
        lengths = real.sum(dim=1).clamp(max=self.prompt_length)
        if int(lengths.min()) < 1:
            raise ValueError("OnPolicySampler got a row without any real token to use as a prompt")
        width = int(lengths.max())
        rank = real.cumsum(dim=1)  # 1, 2, ... over each row's real tokens
        take = real & (rank <= lengths.unsqueeze(1))  # each row's first `length` real tokens
        rows = take.nonzero(as_tuple=True)[0]
        columns = (width - lengths)[rows] + rank[take] - 1  # right-aligned: left padding
        prompts = torch.full((input_ids.shape[0], width), self.pad_token_id, dtype=input_ids.dtype)
        prompt_mask = torch.zeros((input_ids.shape[0], width), dtype=torch.long)
        prompts[rows, columns] = input_ids[take]
        prompt_mask[rows, columns] = 1
        return prompts, prompt_mask

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Return prompt + a continuation sampled from the student, labelled and masked for token KD."""
        started = time.perf_counter()
        prompts, prompt_mask = self.prompts(batch)
        model = unwrap(self.student)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()  # sample from the model as it generates (no dropout)
        try:
            sequences = model.generate(
                input_ids=prompts.to(device),
                attention_mask=prompt_mask.to(device),
                do_sample=True,
                temperature=self.temperature,
                top_k=self.top_k or 0,
                top_p=1.0,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.eos_token_ids or None,
                pad_token_id=self.pad_token_id,
            )
        finally:
            model.train(was_training)
        width = prompts.shape[1]
        generated = sequences[:, width:]
        keep = mask_after_eos(generated, self.eos_token_ids)
        prompt_mask = prompt_mask.to(sequences.device)
        attention_mask = torch.cat([prompt_mask, keep.long()], dim=1)
        labels = torch.cat(
            [torch.full_like(prompt_mask, IGNORE_INDEX), generated.masked_fill(~keep, IGNORE_INDEX)], dim=1
        )
        result = {"input_ids": sequences, "attention_mask": attention_mask, "labels": labels}
        if not bool(prompt_mask.all()):
            # the models score the batch without generate()'s bookkeeping: give them the positions it used
            result["position_ids"] = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        self.stats.sampled_batches += 1
        self.stats.sampled_tokens += int(keep.sum())
        self.stats.seconds += time.perf_counter() - started
        return result
