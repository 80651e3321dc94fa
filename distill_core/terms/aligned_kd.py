"""The KD term of a teacher and a student with different tokenizers: an aligned loss over token groups.

The teacher source (:class:`~distill_core.cross_tokenizer.source.CrossTokenizerTeachers`) gives
the teacher's logits over its own tokens and the batch's
:class:`~distill_core.cross_tokenizer.TokenAlignment`; this term hands both, with the student's
dense logits, to the configured ``aligned_kd_loss`` component (``DistillationConfig.cross_tokenizer``).
The component averages over the micro-batch's kept groups; like token KD, the term is then made a
share of the mean over the kept groups of the whole optimisation step (the teacher source counts
them as the micro-batch's ``tokens``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from distill_core.config import DistillationConfig
from distill_core.errors import AdaptorError, DistillError, ShapeMismatchError
from distill_core.registry import get_registry
from distill_core.step import MicroBatch, StepInfo
from distill_core.terms.hard_label import share_of_step_mean


class AlignedKDTerm:
    """The configured ``aligned_kd_loss``, bound once at setup (see the module docstring)."""

    #: the first-step checks compare no logits shapes: the two vocabularies differ by design
    aligned = True
    #: aligned losses read whole groups of rows, so the student's logits are never chunked
    needs_full_logits = "cross_tokenizer (aligned losses read whole token groups, not rows)"

    def __init__(self, config: DistillationConfig) -> None:
        spec = config.cross_tokenizer
        if spec is None:
            raise ValueError("AlignedKDTerm needs DistillationConfig.cross_tokenizer")
        self.config = config
        self.name = spec.loss
        self.component = get_registry().get("aligned_kd_loss", spec.loss)
        self.params = self.component.validate_params(spec.params)

    def compute(self, results_S: Mapping[str, Any], micro: MicroBatch, step: StepInfo) -> tuple[torch.Tensor, float]:
        """Return the KD term of one micro-batch and the temperature used."""
        if len(micro.teacher) != 1:
            raise DistillError(f"cross-tokenizer KD reads one teacher, but this batch ran {len(micro.teacher)}")
        output = next(iter(micro.teacher.values()))
        alignment = output.alignment
        if alignment is None or output.logits is None:
            raise DistillError(
                "cross-tokenizer KD needs the teacher's logits with the batch's token alignment; the teacher source "
                "gave none (is DistillationConfig.cross_tokenizer set on the distiller that prepared this batch?)"
            )
        logits_S = results_S.get("logits")
        if not isinstance(logits_S, torch.Tensor) or logits_S.dim() != 3:
            raise AdaptorError(
                "cross-tokenizer KD needs the student's token logits (B, L, V) as adaptor_S's 'logits' (for a causal "
                f"LM, logits[:, :-1]); got {type(logits_S).__name__}"
            )
        (logits_T,) = output.logits.dense()
        temperature = self.config.temperature
        try:
            loss = self.component.call_in_order(logits_S, logits_T, alignment, temperature, self.params)
        except ShapeMismatchError as exc:
            raise ShapeMismatchError(f"cross_tokenizer loss {self.name!r}: {exc}") from exc
        if micro.tokens is not None and step.tokens is not None:
            loss = share_of_step_mean(loss, micro.tokens, step)
        return loss, temperature


__all__ = ["AlignedKDTerm"]
