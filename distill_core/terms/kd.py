"""The KD term: logits through the KD plugin, dense or in chunks from hidden states.

Dense: the student adaptor returns ``logits`` (B, C) or (B, L, V); the configured plugin compares
them with the teachers' (averaged for several teachers), read through their
:class:`~distill_core.adaptors.logits.LogitsView`, with the adaptor's ``logits_mask``.

Chunked (DESIGN §9): the student's adaptor returns ``logits_hidden`` (B, L, D) and ``logits_head``
instead of logits (the automatic causal-LM adaptor does); the valid positions are gathered and
:func:`distill_core.terms.token_kd.chunked_token_kd` runs the same plugin over chunks of rows, so
neither model's (B·L, V) logits exist at once. The teacher's view gives the matching rows a chunk
at a time, whatever produced them. The hard-label loss of a chunked student is the token
cross-entropy of the same chunks.

Token-level terms are means over the valid positions of the whole optimisation step: the loop counts
them from the teachers' views before the first backward (:class:`~distill_core.step.StepInfo`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from distill_core.config import DistillationConfig
from distill_core.errors import AdaptorError, ShapeMismatchError
from distill_core.registry import get_registry
from distill_core.schedules import build_temperature_scheduler
from distill_core.step import MicroBatch, StepInfo
from distill_core.adaptors.logits import LogitsView, TeacherChunk, head_params, is_chunked
from distill_core.terms.hard_label import share_of_step_mean
from distill_core.terms.token_kd import chunked_token_kd

#: (weight, logits view) of each teacher whose logits make the KD target
Teachers = Sequence[tuple[float, LogitsView]]


def probability_shift(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return a copy of ``logits`` with the true label's logit swapped with the largest one.

    Positions whose label is negative (ignore index, e.g. -100) are left unchanged.
    """
    labels = labels.to(logits.device).long()
    if labels.shape != logits.shape[:-1]:
        raise AdaptorError(
            f"probability_shift: labels of shape {tuple(labels.shape)} do not fit logits of shape "
            f"{tuple(logits.shape)} (expected {tuple(logits.shape[:-1])})"
        )
    valid = labels >= 0
    label_index = labels.clamp_min(0).unsqueeze(-1)
    top_index = logits.argmax(dim=-1, keepdim=True)
    label_value = logits.gather(-1, label_index)
    top_value = logits.gather(-1, top_index)
    shifted = logits.scatter(-1, label_index, top_value).scatter(-1, top_index, label_value)
    return torch.where(valid.unsqueeze(-1), shifted, logits)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class KDTerm:
    """The configured KD loss, bound once at setup; computes the KD (and chunked hard-label) terms."""

    #: token KD compares the same ids on both sides (:class:`~distill_core.terms.aligned_kd.AlignedKDTerm` does not)
    aligned = False

    def __init__(self, config: DistillationConfig, vocab_size: int | None) -> None:
        self.config = config
        self.name = config.kd_loss_type
        self.component = get_registry().get("kd_loss", config.kd_loss_type)
        self.params = self.component.validate_params(config.kd_loss_params)
        schedule, schedule_params = config.temperature_schedule()
        self.temperature_fn = (
            None if schedule in ("none", "constant") else build_temperature_scheduler(schedule, schedule_params)
        )
        self.vocab_size = vocab_size
        self.chunk_size = config.token_kd_chunk_size

    @property
    def needs_full_logits(self) -> str | None:
        """Why this configuration reads the logits themselves (then token KD cannot be chunked), or None."""
        if self.temperature_fn is not None:
            return f"temperature_scheduler {self.config.temperature_scheduler!r} (it reads the logits)"
        if self.config.probability_shift:
            return "probability_shift=True (it edits the teacher's logits)"
        return None

    def _call(self, student: torch.Tensor, teacher: torch.Tensor, temperature: Any, mask: Any) -> torch.Tensor:
        return self.component.call_in_order(student, teacher, temperature, mask, self.params)

    def row_loss(self, logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: Any) -> torch.Tensor:
        """The plugin on 2-D (rows, V) logits, as :func:`~distill_core.terms.token_kd.chunked_token_kd` calls it."""
        return self._call(logits_S, logits_T, temperature, None)

    # -- the terms -------------------------------------------------------------------------------
    def compute(
        self,
        results_S: Mapping[str, Any],
        teachers: Teachers,
        micro: MicroBatch,
        step: StepInfo,
        *,
        hard_labels: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, float | torch.Tensor]:
        """Return the KD term, the chunked token cross-entropy (or None) and the temperature used.

        The cross-entropy is computed for a chunked student with ``hard_labels``. Token-level terms
        are shares of the step's token mean (see the module docstring).
        """
        if is_chunked(results_S):
            kd_sum, ce_sum = self._chunked(results_S, teachers, hard_labels)
            share = step.token_share()
            return kd_sum * share, None if ce_sum is None else ce_sum * share, self.config.temperature
        kd, temperature = self._dense(results_S, teachers)
        if micro.tokens is not None and step.tokens is not None:
            # the plugin averaged over this micro-batch's positions: make it a share of the step's mean
            kd = share_of_step_mean(kd, micro.tokens, step)
        return kd, None, temperature

    def _dense(self, results_S: Mapping[str, Any], teachers: Teachers) -> tuple[torch.Tensor, Any]:
        config = self.config
        logits_S = _as_list(results_S.get("logits"))
        logits_T = self.target(teachers)
        mask = _kd_mask(results_S, teachers)
        labels = results_S.get("labels") if config.probability_shift else None
        if config.probability_shift and labels is None:
            raise AdaptorError("probability_shift=True needs 'labels' from adaptor_S (the true class ids)")
        vocab = self.vocab_size
        total = None
        temperature: float | torch.Tensor = config.temperature
        for index, (student, teacher) in enumerate(zip(logits_S, logits_T)):
            if vocab is not None:  # a padded vocabulary (either side): the shared first N (views, no copy)
                student, teacher = student[..., :vocab], teacher[..., :vocab]
            if labels is not None:
                teacher = probability_shift(
                    teacher, _as_list(labels)[index] if isinstance(labels, (list, tuple)) else labels
                )
            if self.temperature_fn is not None:
                temperature = self.temperature_fn(student, teacher, config.temperature)
            try:
                loss = self._call(student, teacher, temperature, mask if student.dim() == 3 else None)
            except ShapeMismatchError as exc:
                raise ShapeMismatchError(f"kd_loss_type {self.name!r} on logits {index}: {exc}") from exc
            total = loss if total is None else total + loss
        if total is None:
            raise AdaptorError("no logits to distil: adaptor_S and adaptor_T returned empty 'logits'")
        return total, temperature

    @staticmethod
    def target(teachers: Teachers) -> list[torch.Tensor]:
        """The dense KD target: the (weighted average of the) teachers' logits."""
        per_teacher = [view.dense() for _, view in teachers]
        if len(per_teacher) == 1:
            return per_teacher[0]
        averaged = []
        for tensors in zip(*per_teacher):
            target = tensors[0] * teachers[0][0]
            for (weight, _), tensor in zip(teachers[1:], tensors[1:]):
                target = target + tensor * weight
            averaged.append(target)
        return averaged

    def _chunked(
        self, results_S: Mapping[str, Any], teachers: Teachers, hard_labels: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden_S = results_S["logits_hidden"]
        mask = _kd_mask(results_S, teachers)
        keep = (
            torch.ones(hidden_S.shape[:2], dtype=torch.bool, device=hidden_S.device)
            if mask is None
            else mask.to(hidden_S.device) != 0
        )
        rows_S = hidden_S[keep]  # reads the number of valid rows (one host sync per micro-batch on CUDA)
        weight_S, bias_S = head_params(results_S["logits_head"], self.vocab_size)
        teacher_chunk = self._teacher_chunks(teachers, keep)
        labels = None
        if hard_labels:
            labels = results_S.get("labels")
            if labels is None:
                raise AdaptorError(
                    "hard_label_weight > 0 with chunked token KD needs 'labels' from adaptor_S (the next-token ids, "
                    "-100 where ignored), since the model then builds no full logits for its own loss"
                )
            if labels.shape != keep.shape:
                raise AdaptorError(
                    f"adaptor_S returned 'labels' of shape {tuple(labels.shape)} next to 'logits_hidden' of shape "
                    f"{tuple(hidden_S.shape)}: the labels must be aligned with the positions that predict them, "
                    f"shape {tuple(keep.shape)} (for a causal LM, labels[:, 1:] next to hidden[:, :-1])"
                )
            labels = labels.to(hidden_S.device, torch.long)[keep]  # int32 from a numpy collator too
        return chunked_token_kd(
            self.row_loss,
            rows_S,
            weight_S,
            bias_S,
            teacher_chunk,
            temperature=self.config.temperature,
            chunk_size=self.chunk_size,
            labels=labels,
        )

    def _teacher_chunks(self, teachers: Teachers, keep: torch.Tensor) -> TeacherChunk:
        chunks = [(weight, view.chunks(keep, self.vocab_size)) for weight, view in teachers]
        if len(chunks) == 1:
            return chunks[0][1]

        def averaged(start: int, end: int) -> torch.Tensor:
            total = None
            for weight, chunk in chunks:
                part = chunk(start, end) * weight
                total = part if total is None else total + part
            return total

        return averaged


def _kd_mask(results_S: Mapping[str, Any], teachers: Teachers) -> Any:
    """The KD positions' mask: the student adaptor's 'logits_mask', else the first teacher's (None: all)."""
    mask = results_S.get("logits_mask")
    return teachers[0][1].mask if mask is None else mask
