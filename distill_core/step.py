"""What passes between the loop, the teacher source and the loss terms in one optimisation step.

Values only: a :class:`MicroBatch` is what the teacher source prepared for one micro-batch before
the step's first backward; :class:`StepInfo` says which step it belongs to (for token means over the
whole step); :class:`StepLoss` is what computing a micro-batch's loss returns, and all the loop reads
of it (the total to back-propagate, each term with its weight, the temperature used).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from distill_core.adaptors.logits import LogitsView
    from distill_core.cross_tokenizer import TokenAlignment

__all__ = ["MicroBatch", "StepInfo", "StepLoss", "TeacherOutput"]


@dataclass(frozen=True)
class TeacherOutput:
    """One teacher's outputs for a micro-batch, as the loss terms read them.

    :param results: the adapted outputs (features and their masks; see docs/adaptors.md), only
        what the configured losses read.
    :param logits: the KD target's logits as a view (dense, from hidden states × head, or stored
        rows), or None when KD is off.
    :param alignment: a teacher with its own tokenizer: the groups pairing its logits' rows with
        the student's (docs/cross-tokenizer.md); None when both share one vocabulary.
    """

    results: Mapping[str, Any]
    logits: LogitsView | None = None
    alignment: TokenAlignment | None = None


@dataclass
class MicroBatch:
    """One micro-batch, with what the teacher source prepared for it before the step's first backward."""

    batch: Any
    task: str | None
    teacher: dict[Any, TeacherOutput] = field(default_factory=dict)  # per teacher key
    captured: dict[Any, torch.Tensor] = field(default_factory=dict)  # custom-match teacher features
    tokens: torch.Tensor | None = None  # valid KD positions (token-level KD), a device tensor


@dataclass(frozen=True)
class StepInfo:
    """The optimisation step a micro-batch belongs to, for losses averaged over the whole step."""

    micro_batches: int
    world_size: int
    tokens: torch.Tensor | None  # valid KD positions of the step on all ranks together

    def token_share(self) -> torch.Tensor | float:
        """Return what turns a sum over one micro-batch's valid tokens into its share of the step's token mean.

        The loop divides each micro-batch's loss by their count and DDP averages over ranks, so the
        share is ``micro_batches · world_size / tokens`` (tokens of the step, all ranks); 1 without
        token counts.
        """
        if self.tokens is None:
            return 1.0
        return float(self.micro_batches * self.world_size) / self.tokens.clamp_min(1.0)


@dataclass(frozen=True)
class StepLoss:
    """The loss of one micro-batch: the weighted total and what it was made of.

    ``terms`` are unweighted, in the order of the distiller's ``term_names()``; ``weights`` are the
    weights this micro-batch applied (schedules included); ``temperature`` is the KD temperature
    used (a number, a per-example tensor from a temperature scheduler, or None without KD).
    """

    total: torch.Tensor
    terms: tuple[torch.Tensor, ...]
    weights: tuple[float, ...]
    temperature: float | torch.Tensor | None = None
