"""Positions that count: a step in which none counts is refused, with what the batch held and why.

A token-level loss is a mean over the positions that count: not padding, not a label of -100. When
none counts in a whole optimisation step, that is a mean over zero tokens: the chunked path would
make it 0 and train nothing without a word, Hugging Face's own loss NaN (and the non-finite check
would blame the learning rate). The loop reads the step's count once, on its first token-level step
(the one read it adds), and raises :func:`empty_step_error`'s error before anything is trained;
later steps carry a flag the non-finite guard reads at its check points
(:class:`~distill_core.nonfinite.NonFiniteGuard`), without a read per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from distill_core.adaptors.kinds import IGNORE_INDEX
from distill_core.errors import NoValidTokensError
from distill_core.step import MicroBatch

__all__ = ["LIKELY_CAUSES", "empty_step_error"]

#: why a step has no position that counts, likeliest first (the messages of both checks name them)
LIKELY_CAUSES = (
    "every label is -100: a chat template without {% generation %} tags makes "
    "apply_chat_template(..., return_assistant_tokens_mask=True) return an all-zero assistant mask, so a "
    "collator that trains on the assistant's tokens only sets every label to -100 (use a template with "
    "generation tags, or build the labels yourself); or prompts so long that truncation left no response token; "
    "or an attention_mask of zeros; or an adaptor whose 'logits_mask' is all zero"
)


def _positions(micro: MicroBatch) -> int:
    """The number of positions of the micro-batch's token logits (the KD mask's size), read from shapes only."""
    for output in micro.teacher.values():
        view = output.logits
        if view is None or not view.token_level():
            continue
        if view.mask is not None:
            return int(view.mask.numel())
        return math.prod(view.describe()[0][1])
    return 0


def _count(tensors: list[torch.Tensor], keep: str) -> tuple[int, int]:
    """(entries kept, entries) over ``tensors``: labels not -100, or mask entries not 0."""
    kept = sum(int((t != IGNORE_INDEX).sum() if keep == "label" else (t != 0).sum()) for t in tensors)
    return kept, sum(int(t.numel()) for t in tensors)


def _batch_findings(micro_batches: Sequence[MicroBatch]) -> list[str]:
    """What the batches' labels and masks say, e.g. ``"labels: 0 of 88 are not -100"``."""
    batches = [micro.batch for micro in micro_batches if isinstance(micro.batch, Mapping)]
    findings = []
    for name, keep, what in (
        ("labels", "label", "are not -100"),
        ("attention_mask", "mask", "are not 0"),
        ("decoder_attention_mask", "mask", "are not 0"),
    ):
        tensors = [batch[name] for batch in batches if isinstance(batch.get(name), torch.Tensor)]
        if tensors:
            kept, entries = _count(tensors, keep)
            findings.append(f"{name}: {kept} of {entries} {what}")
    return findings


def empty_step_error(micro_batches: Sequence[MicroBatch], *, step: int, world_size: int) -> NoValidTokensError:
    """Return the error for the run's first token-level step (``step``) when no position counted (on any process).

    Only called to raise, so it may read the batches (host-device syncs): it names how many
    positions the step's micro-batches held, that none counted, what their labels and masks held,
    and the likely causes.
    """
    count = len(micro_batches)
    positions = sum(_positions(micro) for micro in micro_batches)
    where = "" if world_size == 1 else f" on this process (and none counted on the other {world_size - 1})"
    findings = _batch_findings(micro_batches)
    found = f" In the batch: {'; '.join(findings)}." if findings else ""
    return NoValidTokensError(
        f"optimisation step {step}, the first of this run with token-level losses, has no position that counts: "
        f"its {count} micro-batch"
        f"{'es' if count > 1 else ''} held {positions} positions of token logits{where} and 0 of them counted "
        f"(label not -100 and real tokens by the attention mask), so every loss over tokens would be a mean "
        f"over zero tokens and the run would train nothing. Nothing was trained or saved.{found} Likely causes: "
        f"{LIKELY_CAUSES}."
    )
