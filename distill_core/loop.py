"""The one training loop every distiller shares.

A distiller prepares each micro-batch (its teachers' outputs) and computes its loss; the runtime
(:mod:`distill_core.runtime`) owns device, precision, processes, logs and checkpoints. This module
owns the order of things: gradient accumulation, optimizer and scheduler steps, the cadence of logs,
checkpoints and evaluations, the non-finite guard, and the run's state (one object, saved and
restored whole so a resumed run continues exactly).

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
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import torch

from distill_core.errors import NonFiniteLossError
from distill_core.evaluation import Evaluator
from distill_core.rng import capture_rng, restore_rng
from distill_core.runtime import move_to_device

if TYPE_CHECKING:
    from distill_core.distillers import BaseDistiller
    from distill_core.runtime import Runtime
    from distill_core.teacher_cache.keys import ExampleKeys, KeyedLoader
    from distill_core.tracking import Tracker

__all__ = [
    "BatchSource",
    "MicroBatch",
    "NonFiniteGuard",
    "RunState",
    "StepInfo",
    "TrainingLoop",
    "call_model",
    "move_to_device",
]


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


@dataclass
class MicroBatch:
    """One micro-batch, with what the distiller prepared for it before the step's first backward."""

    batch: Any
    task: str | None
    teacher: dict[Any, Mapping[str, Any]] = field(default_factory=dict)  # adapted outputs per teacher key
    captured: dict[Any, torch.Tensor] = field(default_factory=dict)  # custom-match teacher features
    tokens: torch.Tensor | None = None  # valid KD positions (token-level KD), a device tensor


@dataclass(frozen=True)
class StepInfo:
    """The optimisation step a micro-batch belongs to, for losses averaged over the whole step."""

    micro_batches: int
    world_size: int
    tokens: torch.Tensor | None  # valid KD positions of the step on all ranks together


def call_model(model: torch.nn.Module, batch: Any, model_args: Mapping[str, Any]) -> Any:
    """Call ``model(**batch)`` for mappings, ``model(*batch)`` for tuples/lists, else ``model(batch)``."""
    if type(batch) is dict or isinstance(batch, Mapping):
        return model(**batch, **model_args)
    if isinstance(batch, (list, tuple)):
        return model(*batch, **model_args)
    return model(batch, **model_args)


class BatchSource:
    """Yields ``(task, batch, keys)`` epoch by epoch.

    ``task`` is None outside multi-task runs; ``keys`` says which examples the batch holds when the
    distiller asked for them (:meth:`record_example_keys`, for the teacher cache), else None.
    """

    def __init__(self, dataloader: Any) -> None:
        self.dataloader = dataloader
        self.keyed: KeyedLoader | None = None

    def batches_per_epoch(self) -> int | None:
        try:
            return len(self.dataloader)
        except TypeError:
            return None

    def shard(self, runtime: Runtime, seed: int) -> None:
        """Give each rank its share of the data (under torch.distributed)."""
        self.dataloader = runtime.shard_data(self.dataloader, "the dataloader", seed)

    def set_epoch(self, epoch: int) -> None:
        from distill_core.runtime.distributed import set_sampler_epoch

        set_sampler_epoch(self.dataloader, epoch)

    def record_example_keys(self) -> None:
        """Yield each batch's example keys from now on (after :meth:`shard`: the keys are dataset indices)."""
        from distill_core.teacher_cache.keys import KeyedLoader

        self.keyed = KeyedLoader(self.dataloader, "the dataloader")
        self.dataloader = self.keyed.loader

    def epoch(self) -> Iterator[tuple[str | None, Any, ExampleKeys | None]]:
        if self.keyed is not None:
            from distill_core.teacher_cache.keys import ExampleKeys

            for batch, ids in self.keyed:
                yield None, batch, ExampleKeys(ids, self.keyed.kind, batch)
            return
        for batch in self.dataloader:
            yield None, batch, None


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


def _detached(total: torch.Tensor, terms: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[total, *terms]`` outside the graph: one detach each, no kernel (the tracker stacks at logging points)."""
    return [total.detach(), *[term.detach() for term in terms]]


class TrainingLoop:
    """Runs the optimisation for one ``train`` call of a distiller."""

    def __init__(
        self,
        distiller: BaseDistiller,
        runtime: Runtime,
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
        self.runtime = runtime
        self.checkpoints = runtime.checkpointer(distiller)
        self.evaluator = Evaluator(runtime, distiller.train_config, self.checkpoints, self.checkpoints.trainables)
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
        self._num_steps = num_steps
        self._clip_params = [p for module in distiller.trainable_modules() for p in module.parameters()]
        self.guard = NonFiniteGuard(distiller.term_names(), self.config.nonfinite_policy)
        self._applied_weights: list[float] = []
        self._plain_steps: dict[int, StepInfo] = {}

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
        distiller, state, runtime = self.distiller, self.state, self.runtime
        if resume is not None and resume["run_state"].get("data_seed") is not None:
            state.data_seed = resume["run_state"]["data_seed"]  # shard the data as the saved run did
        elif runtime.distributed:
            state.data_seed = runtime.shared_seed()
        if runtime.distributed:
            self.source.shard(runtime, state.data_seed)
        if distiller.wants_example_keys:
            self.source.record_example_keys()
        self._count_steps()
        self._ckpt_positions = self._checkpoint_positions()
        if resume is not None:
            self.checkpoints.restore(resume, self.optimizer, self.scheduler, state)
        tracker = runtime.make_tracker(distiller.term_names(), state.total_steps, state.global_step)
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
        distiller, runtime = self.distiller, self.runtime
        postprocess = self.batch_postprocessor
        micro = []
        with runtime.autocast():
            for task, batch, keys in group:
                host = batch if postprocess is None else postprocess(batch)
                if keys is None:
                    micro.append(distiller.prepare(runtime.to_device(host), task, self.model_args))
                    continue
                if postprocess is None:
                    examples = keys
                elif host is not batch and getattr(postprocess, "makes_new_examples", False):
                    from distill_core.teacher_cache.keys import KIND_GENERATED

                    examples = replace(keys, ids=(), kind=KIND_GENERATED, host_batch=host)
                else:  # the same examples, transformed: the cache checks their content as the batch now is
                    examples = replace(keys, host_batch=host)
                micro.append(distiller.prepare(runtime.to_device(host), task, self.model_args, examples))
        tokens = distiller.step_tokens(micro)
        if tokens is not None:
            tokens = runtime.sum_across_ranks(tokens)
        count = len(micro)
        step = StepInfo(count, runtime.world_size, tokens) if tokens is not None else self._plain_step(count)
        values = None
        for index in range(count):
            item = micro[index]
            micro[index] = None  # let this micro-batch's teacher outputs go once it is done
            with runtime.micro_batch(distiller, last=index == count - 1):
                with runtime.autocast():
                    total, terms = distiller.compute_loss(item, self.state, self.model_args, step)
                runtime.backward(total / count if count > 1 else total)
            if count == 1:
                values = _detached(total, terms)
            else:
                vector = loss_vector(_detached(total, terms))
                values = vector if values is None else values + vector
        return self._optimizer_step(tracker, values / count if count > 1 else values)

    def _optimizer_step(self, tracker: Tracker, values: torch.Tensor | list[torch.Tensor]) -> bool:
        """Step, schedule, log, checkpoint, evaluate. Returns True when training is complete."""
        state, distiller, runtime = self.state, self.distiller, self.runtime
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
        self._applied_weights = distiller.current_weights(state)  # the weights this step's losses were scaled by
        state.global_step += 1
        state.step_in_epoch += 1
        tracker.add_step(state.global_step, values)
        checkpoint_now = self._is_checkpoint_step()
        evaluate_now = self.callback is not None and self._is_eval_step(checkpoint_now)
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
        """Write the interval's means (the weights and temperature the last step applied)."""
        if stacked is None:
            return None
        distiller = self.distiller
        return tracker.log(
            self.state.global_step,
            weights=self._applied_weights,
            lrs=[group["lr"] for group in self.optimizer.param_groups],
            temperature=distiller.last_temperature,
            stacked=stacked,
            extra=distiller.log_scalars(),
        )
