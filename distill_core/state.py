"""The run's state: everything about a run's progress that a checkpoint must restore."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["RunState"]


@dataclass
class RunState:
    """Everything about the run's progress that a checkpoint must restore."""

    global_step: int = 0  # optimisation steps taken
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches consumed in the current epoch
    step_in_epoch: int = 0  # optimisation steps taken in the current epoch
    total_steps: int = 0
    steps_per_epoch: int = 0
    skipped_steps: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False  # early stopping ended the run (a resume of it trains no further)
    pending_evaluation: bool = False  # the callback of this checkpoint's step had not finished when it was saved
    data_seed: int | None = None  # the seed of the data order under torch.distributed (DistributedSampler)
    epoch_start_rng: dict[str, Any] | None = field(default=None, repr=False)

    def progress(self) -> float:
        """Fraction of training done, for weight schedules."""
        return self.global_step / self.total_steps if self.total_steps else 0.0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        for key, value in state.items():
            if key in names:
                setattr(self, key, value)
