"""When a run saves a checkpoint and when it calls the evaluation callback (the seed's rules)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distill_core.config import TrainingConfig
    from distill_core.state import RunState

__all__ = ["Cadence"]


class Cadence:
    """Checkpoint and evaluation steps of one run, from ``TrainingConfig`` and the counted steps.

    Built once the run's steps are counted (``state.steps_per_epoch`` and ``total_steps`` set).
    """

    def __init__(self, config: TrainingConfig, state: RunState, *, step_mode: bool, num_epochs: int | None) -> None:
        self.config = config
        self.state = state
        self.step_mode = step_mode
        self.num_epochs = num_epochs
        self.positions = self._checkpoint_positions()

    def _checkpoint_positions(self) -> set[int]:
        """Steps within an epoch at which epoch-mode checkpoints fall."""
        per_epoch = self.state.steps_per_epoch
        frequency = self.config.ckpt_frequency
        positions = {int(per_epoch * index / frequency) for index in range(1, frequency)}
        positions.add(per_epoch)
        return {position for position in positions if position > 0}

    def checkpoint_now(self) -> bool:
        """Whether the step just taken is saved."""
        state, config = self.state, self.config
        if state.global_step >= state.total_steps:
            return True  # the end of training is always saved
        if config.ckpt_steps is not None:
            return state.global_step % config.ckpt_steps == 0
        if self.step_mode:
            return False
        epoch_number = state.epoch + 1
        return state.step_in_epoch in self.positions and (
            epoch_number % config.ckpt_epoch_frequency == 0 or epoch_number == self.num_epochs
        )

    def evaluate_now(self, checkpoint_now: bool) -> bool:
        """The callback runs at checkpoints, or every ``eval_steps`` steps and at the end when that is set."""
        eval_steps = self.config.eval_steps
        if eval_steps is None:
            return checkpoint_now
        return self.state.global_step % eval_steps == 0 or self.state.global_step >= self.state.total_steps
