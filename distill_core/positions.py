"""Positions that count: a step in which none counts is refused; padding that no mask hides is warned about.

A token-level loss is a mean over the positions that count: not padding, not a label of -100. When
none counts in a whole optimisation step, that is a mean over zero tokens: the chunked path would
make it 0 and train nothing without a word, Hugging Face's own loss NaN (and the non-finite check
would blame the learning rate). The loop reads the step's count once, on its first token-level step
(the one read it adds), and raises :func:`empty_step_error`'s error before anything is trained;
later steps carry a flag the non-finite guard reads at its check points
(:class:`~distill_core.nonfinite.NonFiniteGuard`), without a read per step.

Padding that no mask hides: a causal-LM or encoder-decoder batch without ``attention_mask`` whose
``input_ids`` hold the pad token trains on the pads (as inputs the model attends to, and as
positions the loss counts). :class:`PaddingCheck` warns about it on a task's first step; it warns
rather than refuses because many tokenizers pad with their end-of-sequence token, so a "pad" may be
a real token (packed sequences without padding hold it between documents).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distill_core.adaptors.kinds import IGNORE_INDEX, model_kind
from distill_core.errors import NoValidTokensError
from distill_core.modules import unwrap
from distill_core.step import MicroBatch

__all__ = ["LIKELY_CAUSES", "PaddingCheck", "UnmaskedPadding", "empty_step_error", "unmasked_padding"]

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


@dataclass(frozen=True)
class UnmaskedPadding:
    """Pad positions of a batch without ``attention_mask``: runs of the pad id at the start or end of rows."""

    left: int  # positions in leading runs (left padding)
    right: int  # positions in trailing runs (right padding)
    labels_ignore_them: bool  # the batch has labels, and they are -100 at every one of these positions


def unmasked_padding(batch: Any, pad_token_id: int, *, eos_token_id: int | None = None) -> UnmaskedPadding | None:
    """Return the padding of ``batch`` that no ``attention_mask`` hides, or None (a mask, no pad, no input_ids).

    Padding is a run of ``pad_token_id`` at the start (left) or end (right) of a row; a pad id inside a
    row is taken for a real token. When the pad id is also the EOS id and every row ends with it, the
    first token of each trailing run is the row's own EOS, not padding. Reads the batch (host syncs):
    for a task's first step only.
    """
    if not isinstance(batch, Mapping) or batch.get("attention_mask") is not None:
        return None
    input_ids = batch.get("input_ids")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        return None
    pads = input_ids == pad_token_id
    length = input_ids.shape[1]
    lead = pads.long().cumprod(dim=1).sum(dim=1)  # leading pads of each row
    trail = pads.flip(1).long().cumprod(dim=1).sum(dim=1)
    trail = torch.where(lead == length, torch.zeros_like(trail), trail)  # a row of pads only: count it once
    if eos_token_id == pad_token_id and bool((trail > 0).all()):
        trail = trail - 1  # every row ends with the EOS: the first of each trailing run is a real token
    positions = torch.arange(length, device=input_ids.device)
    padding = (positions < lead[:, None]) | (positions >= length - trail[:, None])
    left, right = int(lead.sum()), int(trail.sum())
    if left + right == 0:
        return None
    labels = batch.get("labels")
    ignored = (
        isinstance(labels, torch.Tensor)
        and labels.shape == input_ids.shape
        and bool((labels[padding] == IGNORE_INDEX).all())
    )
    return UnmaskedPadding(left=left, right=right, labels_ignore_them=ignored)


def _token_id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class PaddingCheck:
    """Warns, on a task's first step, about pad positions a causal-LM or encoder-decoder batch does not mask.

    :param model: the student (its kind, and its config's pad and EOS ids).
    :param tokenizer: when given, its pad and EOS ids come first (it padded the batches).
    """

    def __init__(self, model: nn.Module, tokenizer: Any = None) -> None:
        config = getattr(unwrap(model), "config", None)
        self.kind = model_kind(model)
        self.pad_token_id = _token_id(getattr(tokenizer, "pad_token_id", None))
        if self.pad_token_id is None:
            self.pad_token_id = _token_id(getattr(config, "pad_token_id", None))
        self.eos_token_id = _token_id(getattr(tokenizer, "eos_token_id", None))
        if self.eos_token_id is None:
            self.eos_token_id = _token_id(getattr(config, "eos_token_id", None))

    @property
    def active(self) -> bool:
        """Whether batches are checked at all (a generative model with a known pad id)."""
        return self.kind in ("causal_lm", "encoder_decoder") and self.pad_token_id is not None

    def __call__(self, batch: Any) -> None:
        """Warn (UserWarning) when ``batch`` trains on padding; see the module docstring."""
        if not self.active:
            return
        found = unmasked_padding(batch, self.pad_token_id, eos_token_id=self.eos_token_id)
        if found is None:
            return
        causal = self.kind == "causal_lm"
        if causal and found.left == 0 and found.labels_ignore_them:
            return  # right padding after every real token, and no label there: nothing real sees or learns it
        sides = [f"{count} at the {side} of rows ({side} padding)" for count, side in
                 ((found.left, "left"), (found.right, "right")) if count]
        fix = "pass attention_mask (1 for real tokens, 0 for pads)"
        if not causal:
            harm = "the encoder attends to them from every position (labels of -100 cannot undo that)"
        elif found.left:
            harm = (
                "every later token attends to the left pads (labels of -100 cannot undo that), and the losses "
                "count the positions that predict from them"
            )
        else:
            harm = "the losses count them as positions to predict and to predict from"
            fix += ", or labels with -100 at the pads"
        eos = (
            " (the pad token is also the end-of-sequence token; if these are real tokens, pass an all-ones "
            "attention_mask to say so)"
            if self.pad_token_id == self.eos_token_id
            else ""
        )
        warnings.warn(
            f"the batch has no attention_mask, but its input_ids hold {found.left + found.right} pad positions "
            f"(pad token id {self.pad_token_id}): {' and '.join(sides)}{eos}. Without a mask {harm}, so the run "
            f"trains on padding; {fix}",
            UserWarning,
            stacklevel=2,
        )
