"""The one training loop every distiller shares.

Per step the loop takes a group of micro-batches from the data source, has the teacher source
prepare each one (its teachers' outputs), asks the distiller for each micro-batch's loss (a
:class:`~distill_core.step.StepLoss` value) and hands its total to the runtime's backward; then it
steps the optimizer and scheduler and logs what the last StepLoss said. The runtime
(:mod:`distill_core.runtime`) owns device, precision and processes; the checkpointer
(:mod:`distill_core.runtime.checkpointing`) the files; the evaluator (:mod:`distill_core.evaluation`)
the callback, the best checkpoint and early stopping. This module owns the order of things:
gradient accumulation, the cadence of logs, checkpoints and evaluations, the non-finite guard, and
the run's state (one object, saved and restored whole so a resumed run continues exactly). Nothing
it calls calls back into it.

One optimisation step takes ``gradient_accumulation_steps`` micro-batches. The teachers see all of
them first (under ``no_grad``), so the step's number of valid tokens is known before the first
backward: a token-level KD term is a mean over the valid tokens of the whole step (on every rank
together), not a mean of per-micro-batch means.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distill_core.batches import BatchSource, call_model, device_batches
from distill_core.cadence import Cadence
from distill_core.evaluation import Evaluator
from distill_core.nonfinite import NonFiniteGuard, loss_vector
from distill_core.positions import empty_step_error
from distill_core.rng import capture_rng, restore_rng
from distill_core.runtime import move_to_device
from distill_core.state import RunState
from distill_core.step import MicroBatch, StepInfo, StepLoss

if TYPE_CHECKING:
    from distill_core.config import TrainingConfig
    from distill_core.modules import Trainables
    from distill_core.runtime import Runtime
    from distill_core.runtime.checkpointing import Checkpointer
    from distill_core.teacher_cache.keys import ExampleKeys
    from distill_core.teachers import TeacherSource
    from distill_core.tracking import Tracker

__all__ = [
    "BatchSource",
    "MicroBatch",
    "NonFiniteGuard",
    "RunState",
    "StepInfo",
    "StepLoss",
    "TrainingLoop",
    "call_model",
    "move_to_device",
]

#: ``compute_loss(micro, progress, model_args, step)``: the loss of one micro-batch
ComputeLoss = Callable[[MicroBatch, float, Mapping[str, Any], StepInfo], StepLoss]


def _detached(total: torch.Tensor, terms: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """``[total, *terms]`` outside the graph: one detach each, no kernel (the tracker stacks at logging points)."""
    return [total.detach(), *[term.detach() for term in terms]]


class TrainingLoop:
    """Runs the optimisation for one ``train`` call of a distiller."""

    def __init__(
        self,
        runtime: Runtime,
        config: TrainingConfig,
        *,
        student: nn.Module,
        trainables: Trainables,
        teachers: TeacherSource,
        compute_loss: ComputeLoss,
        term_names: list[str],
        checkpoints: Checkpointer,
        optimizer: torch.optim.Optimizer,
        make_scheduler: Callable[[int], Any] | None,
        source: BatchSource,
        num_epochs: int | None,
        num_steps: int | None,
        callback: Callable[..., Any] | None,
        max_grad_norm: float | None,
        batch_postprocessor: Callable[[Any], Any] | None,
        model_args: dict[str, Any],
    ) -> None:
        """
        :param student: the student as the runtime prepared it (its gradient synchronisation is
            held back on accumulation micro-batches).
        :param trainables: student and projections (what is clipped).
        :param teachers: the teacher source that prepares each micro-batch.
        :param compute_loss: the distiller's ``compute_loss``.
        :param term_names: the names of the loss terms, in the order of ``StepLoss.terms``.
        :param make_scheduler: builds the LR scheduler from the run's number of optimisation steps;
            :meth:`setup` calls it once the data is sharded and the steps are counted, while the
            user's DataLoader objects sample as this rank reads them (their ``len`` is this rank's).
        """
        self.runtime = runtime
        self.config = config
        self.student = student
        self.teachers = teachers
        self.compute_loss = compute_loss
        self.term_names = term_names
        self.checkpoints = checkpoints
        self.evaluator = Evaluator(runtime, config, checkpoints, trainables)
        self.optimizer = optimizer
        self.make_scheduler = make_scheduler
        self.scheduler: Any = None  # built by setup()
        self.source = source
        self.callback = callback
        self.max_grad_norm = max_grad_norm if max_grad_norm is not None and max_grad_norm > 0 else None
        self.batch_postprocessor = batch_postprocessor
        self.model_args = model_args
        self.accumulation = config.gradient_accumulation_steps
        self.state = RunState()
        self.step_mode = num_steps is not None
        self.num_epochs = num_epochs
        self._num_steps = num_steps
        self._clip_params = list(trainables.parameters())
        self.guard = NonFiniteGuard(term_names, config.nonfinite_policy, cause=runtime.precision.weights_advice)
        self._last: StepLoss | None = None  # the last micro-batch's loss: its weights and temperature are logged
        self._plain_steps: dict[int, StepInfo] = {}
        self._zero_flag: torch.Tensor | None = None  # a step's flag when positions counted, once steps carry flags
        self._set_up = False

    def _zero_grad(self) -> None:
        """``optimizer.zero_grad(set_to_none=True)``.

        For an optimizer that keeps torch's own ``zero_grad``, the same assignments written out: that
        method wraps them in a profiler range, which costs about 10 µs a step on the CPU (measured).
        An optimizer class with its own ``zero_grad`` gets it called.
        """
        optimizer = self.optimizer
        if type(optimizer).zero_grad is not torch.optim.Optimizer.zero_grad:
            optimizer.zero_grad(set_to_none=True)
            return
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = None

    def _plain_step(self, micro_batches: int) -> StepInfo:
        """The StepInfo of a step without token counts: one per micro-batch count, made once."""
        step = self._plain_steps.get(micro_batches)
        if step is None:
            step = self._plain_steps[micro_batches] = StepInfo(micro_batches, self.runtime.world_size, None)
        return step

    def _count_steps(self) -> None:
        batches = self.source.batches_per_epoch()
        state = self.state
        if self.step_mode:
            state.total_steps = self._num_steps
            state.steps_per_epoch = math.ceil(batches / self.accumulation) if batches else 0
            return
        if not batches:
            raise ValueError(
                "the dataloader has no length (or is empty), so epochs cannot be counted; pass num_steps= "
                "instead of num_epochs="
            )
        state.steps_per_epoch = math.ceil(batches / self.accumulation)
        state.total_steps = state.steps_per_epoch * self.num_epochs

    # -- the loop --------------------------------------------------------------------------------
    def setup(self, resume: dict[str, Any] | None = None) -> None:
        """Shard the data, count the steps and build the LR scheduler; writes nothing.

        Separate from :meth:`run` so the caller can still refuse the run (a scheduler factory that
        fails) before anything of a previous run is cleared.
        """
        state, runtime = self.state, self.runtime
        if resume is not None and resume["run_state"].get("data_seed") is not None:
            state.data_seed = resume["run_state"]["data_seed"]  # shard the data as the saved run did
        elif runtime.distributed:
            state.data_seed = runtime.shared_seed()
        if runtime.distributed:
            self.source.shard(runtime, state.data_seed)
        if self.teachers.wants_example_keys:
            self.source.record_example_keys()
        self._count_steps()
        self.cadence = Cadence(self.config, state, step_mode=self.step_mode, num_epochs=self.num_epochs)
        if self.make_scheduler is not None:
            # a schedule lasts the run's steps: the factory gets their number, and len() of the
            # user's own DataLoader in it counts this rank's batches (the same script under torchrun)
            with self.source.users_loaders_as_read():
                self.scheduler = self.make_scheduler(state.total_steps)
        self._set_up = True

    def run(self, resume: dict[str, Any] | None = None) -> RunState:
        if not self._set_up:
            self.setup(resume)
        state, runtime = self.state, self.runtime
        if resume is not None:
            self.checkpoints.restore(resume, self.optimizer, self.scheduler, state)
        tracker = runtime.make_tracker(self.term_names, state.total_steps, state.global_step)
        try:
            if state.pending_evaluation:
                # killed while the callback of the checkpoint we resume from ran: evaluate it again
                if self.callback is not None and self.evaluator.evaluate(
                    state, self.callback, tracker, checkpointed=True
                ):
                    return state
                state.pending_evaluation = False
            while state.global_step < state.total_steps and not state.stopped_early:
                if not self.step_mode and state.epoch >= self.num_epochs:
                    break
                finished = self._run_epoch(tracker, resuming=resume is not None and state.batch_in_epoch > 0)
                resume = None
                if finished:
                    break
            self._log(tracker, tracker.interval())  # the last, partial logging interval
        finally:
            tracker.close()
        return state

    def _epoch_iterator(self, resuming: bool) -> Iterator[tuple[str | None, Any, ExampleKeys | None]]:
        state = self.state
        self.source.set_epoch(state.epoch)
        if not resuming:
            # the global RNGs and the loaders' own generators (DataLoader(generator=...)), before any draw
            state.epoch_start_rng = {**capture_rng(), "loader_generators": self.source.generator_states()}
            return self.source.epoch()
        # Replay the epoch's data order: the shuffling draws from the RNGs as they were at the epoch's
        # start; then skip what was consumed and put the global RNGs back where the run stopped (the
        # loaders' generators are where the replayed draws left them, as in the uninterrupted run).
        current = capture_rng()
        restore_rng(state.epoch_start_rng)
        self.source.set_generator_states(state.epoch_start_rng.get("loader_generators"))
        iterator = self.source.epoch()
        for _ in range(state.batch_in_epoch):
            next(iterator)
        restore_rng(current)
        return iterator

    def _run_epoch(self, tracker: Tracker, resuming: bool) -> bool:
        state = self.state
        iterator = self._epoch_iterator(resuming)
        took_any = False
        while True:
            # the last accumulation of an epoch may be partial: it still makes a step
            group = list(itertools.islice(iterator, self.accumulation))
            if not group:
                break
            took_any = True
            state.batch_in_epoch += len(group)
            if self._run_step(group, tracker):
                return True
        if not took_any and state.batch_in_epoch == 0:  # not even batches skipped on resume
            if state.global_step == 0:
                raise ValueError("the dataloader yielded no batches")
            # a generator or iterator is spent after one pass: without this, num_steps would loop forever
            raise ValueError(
                f"the dataloader yielded no batches in epoch {state.epoch + 1}, after {state.global_step} of "
                f"{state.total_steps} steps: it can be iterated only once (a generator or an iterator); pass a "
                f"re-iterable loader (a DataLoader or a list), or num_steps no larger than the batches it yields"
            )
        state.epoch += 1
        state.batch_in_epoch = 0
        state.step_in_epoch = 0
        return False

    def _run_step(self, group: list[tuple[str | None, Any, ExampleKeys | None]], tracker: Tracker) -> bool:
        """Forward and backward of one step's micro-batches, then the optimizer step."""
        runtime, teachers, model_args = self.runtime, self.teachers, self.model_args
        with runtime.autocast():
            # the teachers see every micro-batch first, so the step's token count is known before any backward
            micro = [
                teachers.prepare(batch, task, model_args, keys)
                for task, batch, keys in device_batches(group, runtime, self.batch_postprocessor)
            ]
        count = len(micro)
        tokens = micro[0].tokens
        if tokens is not None:
            if count > 1:
                tokens = torch.stack([item.tokens for item in micro]).sum()
            elif runtime.distributed:
                tokens = tokens.clone()  # the sum across ranks is in place: micro.tokens stays this rank's
            tokens = runtime.sum_across_ranks(tokens)
            step = StepInfo(count, runtime.world_size, tokens)
            if self._zero_flag is None:
                self._first_token_step(micro, tokens, tracker)
        else:
            step = self._plain_step(count)
        progress = self.state.progress()
        values = None
        for index in range(count):
            item = micro[index]
            micro[index] = None  # let this micro-batch's teacher outputs go once it is done
            with runtime.micro_batch(self.student, last=index == count - 1):
                with runtime.autocast():
                    loss = self.compute_loss(item, progress, model_args, step)
                runtime.backward(loss.total / count if count > 1 else loss.total)
            if count == 1:
                values = _detached(loss.total, loss.terms)
            else:
                vector = loss_vector(_detached(loss.total, loss.terms))
                values = vector if values is None else values + vector
        self._last = loss
        if count > 1:
            values = values / count
        if self._zero_flag is not None:  # token-level runs: the step's "no position counted" flag, on the device
            flag = self._zero_flag if tokens is None else (tokens == 0).to(torch.float32)
            values = [*values, flag] if isinstance(values, list) else torch.cat([values, flag.reshape(1)])
        return self._optimizer_step(tracker, values)

    def _first_token_step(self, micro: list[MicroBatch], tokens: torch.Tensor, tracker: Tracker) -> None:
        """Refuse a first step in which no position counts (one read); later steps carry a flag instead.

        A later step without counted positions is found by the non-finite guard at its next check
        point (raise), or skipped (policy "skip"): knowing it before the update would take a read
        every step.
        """
        if not float(tokens) > 0:
            raise empty_step_error(micro, step=self.state.global_step + 1, world_size=self.runtime.world_size)
        self._zero_flag = torch.zeros((), dtype=torch.float32, device=tokens.device)
        self.guard.count_empty_steps()
        tracker.add_flag("without_counted_tokens", self._zero_flag)

    def _optimizer_step(self, tracker: Tracker, values: torch.Tensor | list[torch.Tensor]) -> bool:
        """Step, schedule, log, checkpoint, evaluate. Returns True when training is complete."""
        state, runtime = self.state, self.runtime
        if self.guard.skip(values, runtime):
            # a non-finite loss under nonfinite_policy="skip": the step counts (schedules advance) but
            # changes no weight and no optimizer state
            state.skipped_steps += 1
        else:
            runtime.finish_gradients(self.optimizer, self._clip_params, self.max_grad_norm)
            runtime.optimizer_step(self.optimizer)
        if self.scheduler is not None:
            with warnings.catch_warnings():
                # with fp16 the scaler may skip a step; torch then warns about the order of steps
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
                self.scheduler.step()
        self._zero_grad()
        state.global_step += 1
        state.step_in_epoch += 1
        tracker.add_step(state.global_step, values)
        checkpoint_now = self.cadence.checkpoint_now()
        evaluate_now = self.callback is not None and self.cadence.evaluate_now(checkpoint_now)
        log_now = state.global_step % self.config.log_steps == 0
        if log_now or checkpoint_now or evaluate_now:
            steps, stacked = list(tracker.steps), tracker.interval()
            means = self._log(tracker, stacked) if log_now else None
            # at logging points, and before evaluating or saving anything
            self.guard.check(stacked, steps, state, means)
        if checkpoint_now:
            state.pending_evaluation = evaluate_now
            tracker.status("distill: saving")
            self.checkpoints.save(state, self.optimizer, self.scheduler)
        stop = False
        if evaluate_now:
            tracker.status("distill: evaluating")
            stop = self.evaluator.evaluate(state, self.callback, tracker, checkpointed=checkpoint_now)
            if stop and not checkpoint_now:
                # early stopping between checkpoints: save where the run stopped, as at its end
                self.checkpoints.save(state, self.optimizer, self.scheduler)
        if checkpoint_now or evaluate_now:
            tracker.status("distill")
        return stop or state.global_step >= state.total_steps

    def _log(self, tracker: Tracker, stacked: torch.Tensor | None) -> list[float] | None:
        """Write the interval's means (with the weights and temperature the last step applied)."""
        if stacked is None:
            return None
        last = self._last
        return tracker.log(
            self.state.global_step,
            weights=[] if last is None else list(last.weights),
            lrs=[group["lr"] for group in self.optimizer.param_groups],
            temperature=None if last is None else last.temperature,
            stacked=stacked,
            extra=self.teachers.log_scalars(),
        )
