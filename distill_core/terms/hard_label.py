"""The hard-label term: the sum of the losses the student's model computed itself (adaptor ``losses``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from distill_core.errors import AdaptorError

__all__ = ["hard_label_loss"]


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
