"""The one training loop every distiller shares.

A distiller supplies ``compute_loss(batch, task, state, model_args) -> (total, terms)`` and the
modules it trains; this module owns everything else: device placement of batches, gradient
accumulation, clipping, optimizer and scheduler steps, logging, checkpoint cadence, the callback,
and the run's state (one object, saved and restored whole so a resumed run continues exactly).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch

from distill_core.checkpoint import capture_rng, restore_rng
from distill_core.errors import NonFiniteLossError

if TYPE_CHECKING:
    from distill_core.distillers import BaseDistiller


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


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(value, device) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


def call_model(model: torch.nn.Module, batch: Any, model_args: Mapping[str, Any]) -> Any:
    """Call ``model(**batch)`` for mappings, ``model(*batch)`` for tuples/lists, else ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch, **model_args)
    if isinstance(batch, (list, tuple)):
        return model(*batch, **model_args)
    return model(batch, **model_args)


class BatchSource:
    """Yields ``(task, batch)`` pairs epoch by epoch; ``task`` is None outside multi-task runs."""

    def __init__(self, dataloader: Any) -> None:
        self.dataloader = dataloader

    def batches_per_epoch(self) -> int | None:
        try:
            return len(self.dataloader)
        except TypeError:
            return None

    def epoch(self) -> Iterator[tuple[str | None, Any]]:
        for batch in self.dataloader:
            yield None, batch


class NonFiniteGuard:
    """Watches every micro-batch's loss terms for NaN/inf: the one place the loop checks them.

    Per term, the first optimisation step whose loss was not finite is kept in a small tensor on
    the loss's device, updated without a host-device sync. Under policy ``"raise"`` it is checked at
    logging points, from the loss means the tracker reads there anyway (the tensor itself is read
    only when a mean is not finite), and before each checkpoint (one read). Under ``"skip"`` it is
    read once per optimisation step, which must know before updating. The same path runs on every
    device, so CPU tests exercise what runs on a GPU.
    """

    def __init__(self, names: list[str], policy: str) -> None:
        self.names = ["total", *names]
        self.policy = policy
        self._first: torch.Tensor | None = None  # per term: first bad step, -1 while finite

    def observe(self, stacked: torch.Tensor, state: RunState) -> None:
        """Record one micro-batch's losses, the vector ``[total, *terms]`` (no sync)."""
        step = state.global_step + 1  # the step this micro-batch contributes to
        if self._first is None or self._first.device != stacked.device:
            self._first = torch.full(stacked.shape, -1, dtype=torch.long, device=stacked.device)
        self._first = torch.where(~torch.isfinite(stacked) & (self._first < 0), step, self._first)

    def check(self, state: RunState, logged: list[float] | None = None) -> None:
        """Under policy "raise", raise NonFiniteLossError if any term was not finite.

        ``logged``: the means of the logging interval that ends here, as the tracker read them; when
        all are finite, no micro-batch since the previous check was bad, and nothing is read.
        """
        if self.policy != "raise" or self._first is None:
            return
        if logged is not None and all(math.isfinite(value) for value in logged):
            return
        first = self._first.tolist()
        if max(first) < 0:
            return
        bad = [index for index, step in enumerate(first) if step >= 0]
        named = [index for index in bad if index > 0] or bad  # name the terms, "total" only if no term is bad
        step = min(first[index] for index in named)
        plural = len(named) > 1
        raise NonFiniteLossError(
            f"loss term{'s' if plural else ''} {', '.join(repr(self.names[index]) for index in named)} "
            f"{'were' if plural else 'was'} NaN or infinite at optimisation step {step} (found at step "
            f"{state.global_step}: the check runs at logging points and checkpoints); lower the learning rate, "
            f"check the inputs and the loss, or set TrainingConfig.nonfinite_policy='skip' to skip such steps"
        )

    def take_skip(self) -> bool:
        """Under policy "skip": whether the step being finished saw a non-finite loss (then reset)."""
        if self.policy != "skip" or self._first is None:
            return False
        skip = bool((self._first >= 0).any())  # one sync per optimisation step, only in "skip" mode
        self._first = None
        return skip


class TrainingLoop:
    """Runs the optimisation for one ``train`` call of a distiller."""

    def __init__(
        self,
        distiller: BaseDistiller,
        *,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        source: BatchSource,
        num_epochs: int | None,
        num_steps: int | None,
        callback: Callable[..., Any] | None,
        max_grad_norm: float | None,
        batch_postprocessor: Callable[[Any], Any] | None,
        model_args: dict[str, Any],
    ) -> None:
        self.distiller = distiller
        self.config = distiller.train_config
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.source = source
        self.callback = callback
        self.max_grad_norm = max_grad_norm if max_grad_norm is not None and max_grad_norm > 0 else None
        self.batch_postprocessor = batch_postprocessor
        self.model_args = model_args
        self.accumulation = self.config.gradient_accumulation_steps
        self.state = RunState()
        self.step_mode = num_steps is not None
        self.num_epochs = num_epochs
        batches = source.batches_per_epoch()
        if self.step_mode:
            self.state.total_steps = num_steps
            self.state.steps_per_epoch = math.ceil(batches / self.accumulation) if batches else 0
        else:
            if not batches:
                raise ValueError(
                    "the dataloader has no length (or is empty), so epochs cannot be counted; pass num_steps= "
                    "instead of num_epochs="
                )
            self.state.steps_per_epoch = math.ceil(batches / self.accumulation)
            self.state.total_steps = self.state.steps_per_epoch * num_epochs
        self._ckpt_positions = self._checkpoint_positions()
        self._clip_params = [p for module in distiller.trainable_modules() for p in module.parameters()]
        self.guard = NonFiniteGuard(distiller.term_names(), self.config.nonfinite_policy)

    # -- cadence ---------------------------------------------------------------------------------
    def _checkpoint_positions(self) -> set[int]:
        """Steps within an epoch at which epoch-mode checkpoints fall (the seed's rule)."""
        per_epoch = self.state.steps_per_epoch
        frequency = self.config.ckpt_frequency
        positions = {int(per_epoch * index / frequency) for index in range(1, frequency)}
        positions.add(per_epoch)
        return {position for position in positions if position > 0}

    def _is_checkpoint_step(self) -> bool:
        state = self.state
        if state.global_step >= state.total_steps:
            return True  # the end of training is always saved
        if self.config.ckpt_steps is not None:
            return state.global_step % self.config.ckpt_steps == 0
        if self.step_mode:
            return False
        epoch_number = state.epoch + 1
        return state.step_in_epoch in self._ckpt_positions and (
            epoch_number % self.config.ckpt_epoch_frequency == 0 or epoch_number == self.num_epochs
        )

    def _is_eval_step(self, checkpoint_now: bool) -> bool:
        """The callback runs at checkpoints, or every ``eval_steps`` steps and at the end when that is set."""
        eval_steps = self.config.eval_steps
        if eval_steps is None:
            return checkpoint_now
        return self.state.global_step % eval_steps == 0 or self.state.global_step >= self.state.total_steps

    # -- the loop --------------------------------------------------------------------------------
    def run(self, resume: dict[str, Any] | None = None) -> RunState:
        distiller, state = self.distiller, self.state
        if resume is not None:
            distiller.restore_checkpoint(resume, self.optimizer, self.scheduler, state)
        tracker = distiller.make_tracker(state)
        try:
            while state.global_step < state.total_steps and not state.stopped_early:
                if not self.step_mode and state.epoch >= self.num_epochs:
                    break
                finished = self._run_epoch(tracker, resuming=resume is not None and state.batch_in_epoch > 0)
                resume = None
                if finished:
                    break
        finally:
            tracker.close()
        return state

    def _epoch_iterator(self, resuming: bool) -> Iterator[tuple[str | None, Any]]:
        state = self.state
        if not resuming:
            state.epoch_start_rng = capture_rng()
            return self.source.epoch()
        # Replay the epoch's data order: the shuffling draws from the RNG as it was at the epoch's
        # start; then skip what was consumed and put the RNG back where the run stopped.
        current = capture_rng()
        restore_rng(state.epoch_start_rng)
        iterator = self.source.epoch()
        for _ in range(state.batch_in_epoch):
            next(iterator)
        restore_rng(current)
        return iterator

    def _run_epoch(self, tracker: Any, resuming: bool) -> bool:
        state, distiller = self.state, self.distiller
        micro = 0
        for task, batch in self._epoch_iterator(resuming):
            state.batch_in_epoch += 1
            if self.batch_postprocessor is not None:
                batch = self.batch_postprocessor(batch)
            batch = move_to_device(batch, distiller.device)
            with distiller.autocast():
                total, terms = distiller.compute_loss(batch, task, state, self.model_args)
            # one detached vector of [total, *terms] serves both the NaN guard and the logging sums
            values = torch.stack([total.detach().float().reshape(()), *[t.detach().float().reshape(()) for t in terms]])
            self.guard.observe(values, state)
            scaled = total / self.accumulation if self.accumulation > 1 else total
            distiller.backward(scaled)
            tracker.add(values)
            micro += 1
            if micro == self.accumulation:
                micro = 0
                if self._optimizer_step(tracker):
                    return True
        if micro:  # a last, partial accumulation at the epoch's end still gets its step
            scale = self.accumulation / micro
            for param in self._clip_params:
                if param.grad is not None:
                    param.grad.mul_(scale)
            if self._optimizer_step(tracker):
                return True
        state.epoch += 1
        state.batch_in_epoch = 0
        state.step_in_epoch = 0
        if state.steps_per_epoch == 0 and micro == 0 and state.global_step == 0:
            raise ValueError("the dataloader yielded no batches")
        return False

    def _optimizer_step(self, tracker: Any) -> bool:
        """Clip, step, schedule, log, checkpoint. Returns True when training is complete."""
        state, distiller = self.state, self.distiller
        if self.guard.take_skip():
            # a non-finite loss under nonfinite_policy="skip": the step counts (schedules advance) but
            # changes no weight and no optimizer state
            state.skipped_steps += 1
        else:
            if self.max_grad_norm is not None:
                distiller.unscale_gradients(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self._clip_params, self.max_grad_norm)
            distiller.optimizer_step(self.optimizer)
        if self.scheduler is not None:
            with warnings.catch_warnings():
                # with fp16 the scaler may skip a step; torch then warns about the order of steps
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        applied_weights = distiller.current_weights(state)  # the weights this step's losses were scaled by
        state.global_step += 1
        state.step_in_epoch += 1
        checkpoint_now = self._is_checkpoint_step()
        logged = tracker.step(
            state.global_step,
            weights=applied_weights,
            lrs=[group["lr"] for group in self.optimizer.param_groups],
            temperature=distiller.last_temperature,
        )
        evaluate_now = self.callback is not None and self._is_eval_step(checkpoint_now)
        if checkpoint_now or evaluate_now or state.global_step % self.config.log_steps == 0:
            self.guard.check(state, logged)  # at logging points, and before evaluating or saving anything
        if checkpoint_now:
            callback = self.callback if evaluate_now else None
            if distiller.checkpoint(state, self.optimizer, self.scheduler, callback, tracker):
                return True
        elif evaluate_now and distiller.evaluate(state, self.callback, tracker):
            # early stopping between checkpoints: save where the run stopped, as at its end
            distiller.checkpoint(state, self.optimizer, self.scheduler, None, tracker)
            return True
        return state.global_step >= state.total_steps
