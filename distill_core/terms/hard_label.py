"""The hard-label term: the sum of the losses the student's model computed itself (adaptor ``losses``).

For token-level outputs (the step's valid tokens are counted), a model's loss is a mean over one
micro-batch's tokens, as Hugging Face's is; :func:`share_of_step_mean` turns it into its share of a
mean over the valid tokens of the whole optimisation step, as the chunked path's token
cross-entropy is (DESIGN: a mean over tokens is a mean over the valid tokens of the whole step).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from distill_core.errors import AdaptorError

if TYPE_CHECKING:
    from distill_core.step import StepInfo

__all__ = ["hard_label_loss", "share_of_step_mean"]


def hard_label_loss(results: Mapping[str, Any], role: str) -> torch.Tensor:
    """Return the sum of the means of ``results['losses']`` (a DataParallel model returns one loss per device)."""
    losses = results.get("losses")
    losses = [] if losses is None else list(losses) if isinstance(losses, (list, tuple)) else [losses]
    if not losses:
        raise AdaptorError(
            f"{role} returned no 'losses', but hard-label training needs them; return "
            f"{{'losses': [outputs.loss], ...}} (and pass labels in the batch)"
        )
    total = losses[0].mean()
    for loss in losses[1:]:
        total = total + loss.mean()
    return total


def share_of_step_mean(mean: torch.Tensor, tokens: torch.Tensor, step: StepInfo) -> torch.Tensor:
    """Return ``mean`` (over this micro-batch's ``tokens`` valid tokens) as its share of the step's token mean.

    ``mean · tokens`` is the micro-batch's sum; times :meth:`StepInfo.token_share` it is what the
    loop's division by the micro-batch count and DDP's average over ranks turn into
    ``Σ (all micro-batches, all ranks) / tokens of the step``. A micro-batch without a valid token
    contributes exactly 0: Hugging Face's mean over zero tokens is NaN (0/0), and ``NaN · 0`` would
    still be NaN. (The gradient stays finite: the NaN branch of ``where`` gets a zero gradient, and
    a cross-entropy over ignored targets only passes zeros back.) No host-device sync.
    """
    return torch.where(tokens > 0, mean, torch.zeros_like(mean)) * (tokens * step.token_share())
