"""The non-finite guard: the one place a run looks for NaN or infinite losses.

See :class:`NonFiniteGuard` for when it reads the device; ``TrainingConfig.nonfinite_policy``
chooses between raising (naming the term and the first bad step) and skipping such steps.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from distill_core.errors import NonFiniteLossError

if TYPE_CHECKING:
    from distill_core.loop import RunState
    from distill_core.runtime import Runtime

__all__ = ["NonFiniteGuard", "loss_vector"]


class NonFiniteGuard:
    """Checks the loss terms for NaN/inf: the one place the loop does.

    Under policy ``"raise"`` the check uses the per-step loss vectors the tracker keeps: at logging
    points from the means the tracker reads anyway (the vectors themselves are read only when a mean
    is not finite, to name the first bad step), and before each checkpoint or evaluation (one read).
    Under ``"skip"`` each step's vector is read once, since the step must know before updating. Under
    torch.distributed the vectors are summed over ranks first, so every rank takes the same decision.
    """

    def __init__(self, names: list[str], policy: str) -> None:
        self.names = ["total", *names]
        self.policy = policy

    def check(
        self, stacked: torch.Tensor | None, steps: list[int], state: RunState, means: list[float] | None = None
    ) -> None:
        """Raise NonFiniteLossError (policy "raise") if a step of ``stacked`` (steps x terms) was not finite.

        ``means``: the interval's means as the tracker read them; when all are finite, nothing is read.
        """
        if self.policy != "raise" or stacked is None:
            return
        if means is not None and all(math.isfinite(value) for value in means):
            return
        bad = ~torch.isfinite(stacked)
        if means is None and not bool(bad.any()):
            return
        flags = bad.tolist()
        bad_terms = sorted({index for row in flags for index, is_bad in enumerate(row) if is_bad})
        if not bad_terms:
            return
        named = [index for index in bad_terms if index > 0] or bad_terms  # "total" only if no term is bad
        first = min(steps[row] for row, values in enumerate(flags) if any(values[index] for index in named))
        plural = len(named) > 1
        raise NonFiniteLossError(
            f"loss term{'s' if plural else ''} {', '.join(repr(self.names[index]) for index in named)} "
            f"{'were' if plural else 'was'} NaN or infinite at optimisation step {first} (found at step "
            f"{state.global_step}: the check runs at logging points and checkpoints); lower the learning rate, "
            f"check the inputs and the loss, or set TrainingConfig.nonfinite_policy='skip' to skip such steps"
        )

    def skip(self, values: torch.Tensor | list[torch.Tensor], runtime: Runtime) -> bool:
        """Under policy "skip": whether this step saw a non-finite loss on any rank (one read per step)."""
        if self.policy != "skip":
            return False
        return runtime.any_rank(~torch.isfinite(loss_vector(values)).all())


def loss_vector(values: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """A step's ``[total, *terms]`` (0-d tensors outside the graph, or already one vector) as a float32 vector."""
    vector = values if isinstance(values, torch.Tensor) else torch.stack(values)
    return vector if vector.dtype == torch.float32 else vector.float()
