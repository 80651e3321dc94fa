"""The non-finite guard: the one place a run looks for NaN or infinite losses, and for empty steps.

See :class:`NonFiniteGuard` for when it reads the device; ``TrainingConfig.nonfinite_policy``
chooses between raising (naming the term and the first bad step) and skipping such steps. A step in
which no position counted (token-level losses, after the run's first step: that one the loop
refuses at once, :mod:`distill_core.positions`) has losses that are means over zero tokens, no
more defined than a NaN: the same policy applies to it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from distill_core.errors import NonFiniteLossError, NoValidTokensError
from distill_core.positions import LIKELY_CAUSES

if TYPE_CHECKING:
    from distill_core.state import RunState
    from distill_core.runtime import Runtime

__all__ = ["NonFiniteGuard", "loss_vector"]


class NonFiniteGuard:
    """Checks the loss terms for NaN/inf: the one place the loop does.

    Under policy ``"raise"`` the check uses the per-step loss vectors the tracker keeps: at logging
    points from the means the tracker reads anyway (the vectors themselves are read only when a mean
    is not finite, to name the first bad step), and before each checkpoint or evaluation (one read).
    Under ``"skip"`` each step's vector is read once, since the step must know before updating. Under
    torch.distributed the vectors are summed over ranks first, so every rank takes the same decision.

    Steps of token-level losses carry one more entry after the terms (:meth:`count_empty_steps`):
    1 when no position of the step counted, else 0. It is read with the rest: a mean above 0 at a
    check point raises :class:`~distill_core.errors.NoValidTokensError` naming the first such step;
    under ``"skip"`` such a step is skipped.
    """

    def __init__(self, names: list[str], policy: str, *, cause: str | None = None) -> None:
        """
        :param cause: a known likely cause of non-finite losses in this run and its fix (e.g. the
            runtime's advice about float16 weights trained without mixed precision); the error names it
            before the usual suspects.
        """
        self.names = ["total", *names]
        self.policy = policy
        self.cause = cause
        self.empty_column: int | None = None  # where a step's "no position counted" flag is, once steps carry one

    def count_empty_steps(self) -> None:
        """From now on each step's vector ends with its "no position counted" flag (after the terms)."""
        self.empty_column = len(self.names)

    def check(
        self, stacked: torch.Tensor | None, steps: list[int], state: RunState, means: list[float] | None = None
    ) -> None:
        """Raise (policy "raise") if a step of ``stacked`` (steps x columns) was not finite, or had no counted position.

        ``means``: the interval's means as the tracker read them; when they say all is well, nothing
        is read. Without them (a checkpoint or evaluation between logging points), one read.
        """
        if self.policy != "raise" or stacked is None:
            return
        column = self.empty_column
        if means is None:
            checks = [(~torch.isfinite(stacked)).any()]
            if column is not None:
                checks.append((stacked[:, column] > 0).any())
            read = torch.stack(checks).tolist()  # one read
            non_finite, empty = read[0], column is not None and read[1]
        else:
            non_finite = not all(math.isfinite(value) for value in means)
            empty = column is not None and means[column] > 0
        if empty:  # first: the NaN of a mean over zero tokens is not the learning rate's fault
            self._raise_empty(stacked, steps, state)
        if non_finite:
            self._raise_non_finite(stacked, steps, state)

    def _raise_non_finite(self, stacked: torch.Tensor, steps: list[int], state: RunState) -> None:
        flags = (~torch.isfinite(stacked)).tolist()
        bad_terms = sorted({index for row in flags for index, is_bad in enumerate(row) if is_bad})
        if not bad_terms:
            return
        named = [index for index in bad_terms if index > 0] or bad_terms  # "total" only if no term is bad
        first = min(steps[row] for row, values in enumerate(flags) if any(values[index] for index in named))
        plural = len(named) > 1
        advice = (
            "lower the learning rate, check the inputs and the loss"
            if self.cause is None
            else f"the likely cause: {self.cause}. Otherwise check the learning rate, the inputs and the loss"
        )
        raise NonFiniteLossError(
            f"loss term{'s' if plural else ''} {', '.join(repr(self.names[index]) for index in named)} "
            f"{'were' if plural else 'was'} NaN or infinite at optimisation step {first} (found at step "
            f"{state.global_step}: the check runs at logging points and checkpoints); {advice}, or set "
            f"TrainingConfig.nonfinite_policy='skip' to skip such steps"
        )

    def skip(self, values: torch.Tensor | list[torch.Tensor], runtime: Runtime) -> bool:
        """Under policy "skip": whether this step saw a non-finite loss on any rank (one read per step)."""
        if self.policy != "skip":
            return False
        vector = loss_vector(values)
        bad = ~torch.isfinite(vector).all()
        if self.empty_column is not None:
            bad = bad | (vector[self.empty_column] > 0)  # no position counted: nothing to learn from
        return runtime.any_rank(bad)

    def _raise_empty(self, stacked: torch.Tensor, steps: list[int], state: RunState) -> None:
        flags = stacked[:, self.empty_column].tolist()
        first = min(step for step, flag in zip(steps, flags) if flag > 0)
        raise NoValidTokensError(
            f"optimisation step {first} had no position that counts (found at step {state.global_step}: the check "
            f"runs at logging points and before checkpoints and evaluations): every label of its micro-batches was "
            f"-100 or every mask 0, so its losses over tokens were means over zero tokens and it learnt nothing. "
            f"Likely causes: {LIKELY_CAUSES}. Fix the data, or set TrainingConfig.nonfinite_policy='skip' to skip "
            f"such steps (counted in the scalar steps/without_counted_tokens)"
        )


def loss_vector(values: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """A step's ``[total, *terms]`` (0-d tensors outside the graph, or already one vector) as a float32 vector."""
    vector = values if isinstance(values, torch.Tensor) else torch.stack(values)
    return vector if vector.dtype == torch.float32 else vector.float()
