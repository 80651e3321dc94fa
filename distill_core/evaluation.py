"""Evaluation during training: call the user's callback, keep the best student, stop early.

How a checkpoint is written is :class:`~distill_core.runtime.checkpointing.Checkpointer`'s business
and where its files live is :mod:`distill_core.checkpoint`'s; when the callback runs is the loop's
(at checkpoints, or every ``TrainingConfig.eval_steps``). This module decides what an evaluation
means for the run: the metric the callback returned, whether it is the best so far (then the student
is written as ``best.pkl``), and whether patience has run out.

The order at a checkpoint step N: ``gs{N}.pkl`` and the full state of step N are written first
(marked as waiting for their evaluation), and only then does the callback (usually an evaluation,
often the longest part of a run) start. What its metric changes (best, patience, early stop) is
written next to the full state as ``step-N.eval.json`` once it is known. A run killed during the
callback therefore resumes from N, sees that N's evaluation never finished, runs it again (on the
same weights, with the RNG restored around it) and goes on exactly as the uninterrupted run did.

The functional core, :func:`metric_from` and :func:`is_better`, is pure; :class:`Evaluator` applies
it to the run state on every rank alike, so every rank takes the same early-stopping decision.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from distill_core import checkpoint as ckpt
from distill_core.rng import capture_rng, restore_rng

if TYPE_CHECKING:
    from distill_core.config import TrainingConfig
    from distill_core.state import RunState
    from distill_core.modules import Trainables
    from distill_core.runtime import Runtime
    from distill_core.runtime.checkpointing import Checkpointer
    from distill_core.tracking import Tracker

__all__ = ["Evaluator", "is_better", "metric_from"]


def metric_from(result: Any) -> float | None:
    """The metric a callback returned (a number or a one-element tensor), or None."""
    if isinstance(result, bool) or result is None:
        return None
    if isinstance(result, torch.Tensor) and result.numel() == 1:
        return float(result)
    if isinstance(result, numbers.Real):
        return float(result)
    warnings.warn(
        f"the callback returned a {type(result).__name__}; return a number (the metric) to track the "
        f"best checkpoint and stop early, or None",
        UserWarning,
        stacklevel=4,
    )
    return None


def is_better(metric: float, best: float | None, mode: str) -> bool:
    """Whether ``metric`` improves on ``best`` (``mode`` "max" or "min"); NaN never does."""
    if math.isnan(metric):
        return False
    if best is None:
        return True
    return metric > best if mode == "max" else metric < best


class Evaluator:
    """Calls the callback on the student and keeps the run's best metric, best student and patience.

    ``TrainingConfig`` gives the policy (``best_metric_mode``, ``early_stopping_patience``, and
    ``output_dir`` for ``best.pkl``); the bookkeeping lives in the :class:`~distill_core.loop.RunState`
    passed to :meth:`evaluate` (``best_metric``, ``best_step``, ``evals_without_improvement``,
    ``stopped_early``, ``pending_evaluation``), so checkpoints save and restore it with the rest.
    """

    def __init__(
        self, runtime: Runtime, train_config: TrainingConfig, checkpointer: Checkpointer, trainables: Trainables
    ) -> None:
        self.runtime = runtime
        self.config = train_config
        self.checkpointer = checkpointer
        self.trainables = trainables

    def evaluate(self, state: RunState, callback: Callable[..., Any], tracker: Tracker, *, checkpointed: bool) -> bool:
        """Call the callback at ``state.global_step``, log its metric, keep the best; return True to stop early.

        A collective under torch.distributed: every rank calls it and gets the same answer (rank 0's
        metric is the run's). ``checkpointed``: the full state of this step is on disk, and what the
        evaluation changed is recorded beside it (``step-N.eval.json``).
        """
        runtime, step = self.runtime, state.global_step
        result = self._call(callback, step) if runtime.is_main or runtime.callback_on_every_rank else None
        metric = runtime.broadcast(metric_from(result) if runtime.is_main else None)
        if metric is not None:
            tracker.scalars({"eval/metric": metric}, step)
            self._record(state, metric)
        state.pending_evaluation = False
        if checkpointed and runtime.is_main:
            ckpt.write_evaluation(ckpt.state_path(self.config.output_dir, step), state.state_dict())
        runtime.barrier()
        return state.stopped_early

    def _call(self, callback: Callable[..., Any], step: int) -> Any:
        """``callback(model=student, step=step)`` with the student in eval mode and the RNG restored after.

        The callback must not change the run's randomness (a resumed run, which may not call it at
        the same points, would diverge), so every RNG state it advanced is put back.
        """
        rng = capture_rng()
        student = self.trainables.student
        student.eval()
        try:
            return callback(model=student, step=step)
        finally:
            student.train()
            restore_rng(rng)

    def _record(self, state: RunState, metric: float) -> None:
        """Update best and patience for ``metric``; write ``best.pkl`` and ``best.json`` when it improves."""
        config, step = self.config, state.global_step
        if is_better(metric, state.best_metric, config.best_metric_mode):
            state.best_metric, state.best_step, state.evals_without_improvement = metric, step, 0
            student_state = self.checkpointer.student_state()  # a collective when the student is sharded
            if self.runtime.is_main:
                ckpt.save_best(student_state, config.output_dir, step=step, metric=metric, mode=config.best_metric_mode)
        else:
            state.evals_without_improvement += 1
        patience = config.early_stopping_patience
        state.stopped_early = patience is not None and state.evals_without_improvement >= patience
