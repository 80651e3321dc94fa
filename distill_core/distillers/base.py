"""The distiller base class: models, the training session and the ``train`` entry point.

Distillers differ only in their teacher source (where a micro-batch's teacher outputs come from)
and in how they compute a micro-batch's loss; all of them run the one loop in
:mod:`distill_core.loop`. A training session (``with distiller:``, or one ``train()`` call) creates
the runtime on first use, has it prepare the student, projections and teachers, and holds what it
returned; leaving the session puts the plain modules back.
"""

from __future__ import annotations

import abc
import functools
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from torch import nn

from distill_core.batches import BatchSource
from distill_core.config import DistillationConfig, TrainingConfig
from distill_core.errors import DistillError, did_you_mean
from distill_core.loop import TrainingLoop
from distill_core.lr_scheduler import build_lr_scheduler, check_lr_scheduler
from distill_core.state import RunState
from distill_core.modules import Trainables, unwrap
from distill_core.runtime import Runtime
from distill_core.runtime.checkpointing import Checkpointer
from distill_core.step import MicroBatch, StepInfo, StepLoss
from distill_core.teachers import NoTeachers, TeacherSource


def _looks_like_data(value: Any) -> bool:
    """A DataLoader (or list of batches) where an LR scheduler was expected."""
    from torch.utils.data import DataLoader

    if isinstance(value, DataLoader):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and not callable(value)


class BaseDistiller(abc.ABC):
    """Holds the models and runs training; subclasses define ``compute_loss`` and their teacher source."""

    #: teachers by key (0, 1, ... or task names); empty for BasicTraining
    teachers: dict[Any, nn.Module]

    def __init__(
        self, train_config: TrainingConfig, student: nn.Module, distill_config: DistillationConfig | None = None
    ) -> None:
        if not isinstance(train_config, TrainingConfig):
            train_config = TrainingConfig.model_validate(train_config)
        if distill_config is not None and not isinstance(distill_config, DistillationConfig):
            distill_config = DistillationConfig.model_validate(distill_config)
        if not isinstance(student, nn.Module):
            raise TypeError(f"the student model must be a torch.nn.Module, got {type(student).__name__}")
        self.train_config = train_config
        self.distill_config = distill_config
        self.model_S = student  # during a session: what the runtime prepared (e.g. the DDP wrapper)
        self.teachers = {}
        self.projections = nn.ModuleList()
        self.custom_projections = nn.ModuleList()
        self._runtime: Runtime | None = None
        self._session: _Session | None = None

    # -- what the runtime decided ----------------------------------------------------------------
    @property
    def runtime(self) -> Runtime:
        """The runtime (device, precision, processes), created on first use: building a distiller joins no group."""
        if self._runtime is None:
            self._runtime = Runtime(self.train_config)
        return self._runtime

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def is_main(self) -> bool:
        """Whether this is the process that writes logs and checkpoints (rank 0)."""
        return self.runtime.is_main

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.runtime.precision.scaler

    @property
    def student(self) -> nn.Module:
        """The student model itself (unwrapped from DataParallel / DistributedDataParallel)."""
        return unwrap(self.model_S)

    # -- what a subclass provides ----------------------------------------------------------------
    def _uses_part_of_student_per_step(self) -> bool:
        """Whether a step may leave some student parameters without gradient (DDP must then look for them)."""
        return False

    def _teacher_source(self, teachers: dict[Any, nn.Module]) -> TeacherSource:
        """The session's teacher source, over the teachers as the runtime prepared them."""
        return NoTeachers()

    def _attach_hooks(self) -> None:  # noqa: B027 (a no-op unless overridden)
        """Subclasses with forward hooks (custom matches) attach them here."""

    def _detach_hooks(self) -> None:  # noqa: B027
        """Remove what ``_attach_hooks`` attached."""

    @abc.abstractmethod
    def compute_loss(
        self, micro: MicroBatch, progress: float, model_args: Mapping[str, Any], step: StepInfo
    ) -> StepLoss:
        """Return the loss of one micro-batch: its total, each term with its weight, the temperature used.

        ``progress`` is the fraction of training done (for weight schedules).
        """

    @abc.abstractmethod
    def term_names(self) -> list[str]:
        """Names of the loss terms compute_loss returns, for logging."""

    # -- the training session --------------------------------------------------------------------
    def __enter__(self) -> BaseDistiller:
        runtime = self.runtime
        student, teachers = self.model_S, dict(self.teachers)
        trainables = Trainables(student, self.projections, self.custom_projections)
        prepared = runtime.prepare(
            trainables, teachers, find_unused_parameters=self._uses_part_of_student_per_step()
        )
        modes = [(module, module.training) for module in [*trainables.parts(), *teachers.values()]]
        self._session = _Session(student, teachers, trainables, prepared.student, modes, None)
        self.model_S, self.teachers = prepared.student, prepared.teachers
        for module in trainables.parts():
            module.train()
        for teacher in teachers.values():
            teacher.eval()
        self._attach_hooks()
        self._session.source = self._teacher_source(prepared.teachers)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        try:
            if session.source is not None:
                session.source.close()
        finally:
            for module, was_training in session.modes:
                module.train(was_training)
            self._detach_hooks()
            self.runtime.release()
            self.model_S, self.teachers = session.student, session.teachers

    # -- train -----------------------------------------------------------------------------------
    def train(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        dataloader: Any = None,
        num_epochs: int | None = None,
        callback: Callable[..., Any] | None = None,
        *,
        num_steps: int | None = None,
        max_grad_norm: float | None = None,
        batch_postprocessor: Callable[[Any], Any] | None = None,
        scheduler_class: Any = None,
        scheduler_args: dict[str, Any] | None = None,
        resume_from: str | os.PathLike[str] | None = None,
        num_train_epochs: int | None = None,
        **args: Any,
    ) -> RunState:
        """Train the student.

        :param optimizer: the student's optimizer; distill adds each projection's parameters to it as
            a group of its own (options from the match's ``proj``).
        :param scheduler: an LR scheduler instance, or a callable ``scheduler(optimizer)`` that builds
            one after the projection groups are added (an instance built before cannot see them) and
            the data is sharded: ``len(loader)`` of your DataLoader in it counts this process's
            batches, and a step-count parameter it takes (``num_training_steps``, ``total_iters``,
            ``T_max``, ``total_steps``), required or None, gets the run's number of optimisation steps.
        :param dataloader: the training batches (dicts call ``model(**batch)``, tuples ``model(*batch)``).
            Under torch.distributed a DataLoader gets a DistributedSampler (see docs/distributed.md).
        :param num_epochs: how many passes over ``dataloader`` (``num_train_epochs`` is the same).
        :param callback: ``callback(model=student, step=global_step)`` after each checkpoint (or every
            ``eval_steps``), with the student in eval mode; it may return a metric (best checkpoint,
            early stopping).
        :param num_steps: train for this many optimisation steps instead of epochs.
        :param max_grad_norm: clip the gradient norm of student and projections (None or <= 0: off).
        :param batch_postprocessor: applied to each batch before it moves to the device.
        :param scheduler_class: with ``scheduler_args``, built as the callable ``scheduler`` is; a
            step-count argument left out (when required), None or ``"auto"`` gets the run's step count.
        :param resume_from: ``"latest"`` or a checkpoint path under ``output_dir/checkpoints``.
        :param args: extra keyword arguments for every model call.
        :returns: the final run state (global step, epoch, best metric, ...).
        """
        self._check_positional_order(scheduler, dataloader, num_epochs)
        for name in ("dataloaders", "tau"):
            if name in args:
                raise TypeError(
                    f"{type(self).__name__}.train() got {name}=, an option of MultiTaskDistillation.train(); pass "
                    f"one dataloader= here (extra keyword arguments go to every model call)"
                )
        if dataloader is None:
            raise TypeError("train() needs a dataloader")
        source = dataloader if isinstance(dataloader, BatchSource) else BatchSource(dataloader)
        if num_train_epochs is not None:
            if num_epochs is not None and num_epochs != num_train_epochs:
                raise TypeError("pass num_epochs or num_train_epochs (the seed's spelling), not both")
            num_epochs = num_train_epochs
        self._check_train_arguments(
            optimizer, num_epochs, num_steps, callback, max_grad_norm, scheduler_class, scheduler_args
        )
        self.runtime.check_output_folders(resume_from)
        entered_here = self._session is None
        if entered_here:
            self.__enter__()
        session = self._session
        try:
            runtime = self.runtime
            runtime.rebind_optimizer(optimizer)
            self._check_optimizer_holds_student(optimizer)
            self._add_projection_groups(optimizer)
            check_lr_scheduler(optimizer, scheduler, scheduler_class, scheduler_args)
            checkpoints = Checkpointer(runtime, self.train_config, self.distill_config, session.trainables)
            resume = checkpoints.resolve(resume_from)
            make_scheduler = None  # called with the run's step count, once the loop knows it
            if scheduler is not None or scheduler_class is not None:
                make_scheduler = functools.partial(
                    build_lr_scheduler, optimizer, scheduler, scheduler_class, scheduler_args
                )
            loop = TrainingLoop(
                runtime,
                self.train_config,
                student=session.prepared_student,
                trainables=session.trainables,
                teachers=session.source,
                compute_loss=self.compute_loss,
                term_names=self.term_names(),
                checkpoints=checkpoints,
                optimizer=optimizer,
                make_scheduler=make_scheduler,
                source=source,
                num_epochs=num_epochs,
                num_steps=num_steps,
                callback=callback,
                max_grad_norm=max_grad_norm,
                batch_postprocessor=batch_postprocessor,
                model_args=args,
            )
            loop.setup(resume)  # the scheduler is built once the data is sharded and the steps counted
            if resume is None:
                runtime.clear_previous_run()  # after the setup checks: a refused run deletes nothing
            return loop.run(resume)
        finally:
            if entered_here:
                self.__exit__(None, None, None)

    def _check_train_arguments(
        self,
        optimizer: Any,
        num_epochs: Any,
        num_steps: Any,
        callback: Any,
        max_grad_norm: Any,
        scheduler_class: Any,
        scheduler_args: Any,
    ) -> None:
        """Refuse train() arguments that would fail late, or silently do nothing."""
        if (num_epochs is None) == (num_steps is None):
            raise TypeError("train() needs exactly one of num_epochs or num_steps")
        for name, value in (("num_epochs", num_epochs), ("num_steps", num_steps)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Expected argument `{name}` to be a positive integer but got {value!r}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError(
                f"callback must be callable as callback(model=student, step=global_step), got {type(callback).__name__}"
            )
        if max_grad_norm is not None and (isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, Real)):
            raise TypeError(
                f"max_grad_norm must be a number (None or <= 0: no clipping), got {type(max_grad_norm).__name__} "
                f"{max_grad_norm!r}"
            )
        if scheduler_args is not None and scheduler_class is None:
            raise TypeError(
                "train() got scheduler_args but no scheduler_class, so no scheduler would run; pass "
                "scheduler_class=... with them (e.g. torch.optim.lr_scheduler.LambdaLR), or a built scheduler="
            )
        if self.train_config.early_stopping_patience is not None and callback is None:
            raise DistillError(
                "TrainingConfig.early_stopping_patience is set but train() got no callback; pass a "
                "callback that returns the metric to watch, or unset early_stopping_patience"
            )
        if self.train_config.eval_steps is not None and callback is None:
            warnings.warn(
                "TrainingConfig.eval_steps is set but train() got no callback, so nothing is evaluated; pass "
                "callback=... or unset eval_steps",
                UserWarning,
                stacklevel=3,
            )

    @staticmethod
    def _check_positional_order(scheduler: Any, dataloader: Any, num_epochs: Any) -> None:
        """TextBrewer's ``train(optimizer, dataloader, num_epochs)`` binds the data to ``scheduler`` here."""
        if scheduler is not None and _looks_like_data(scheduler):
            raise TypeError(
                f"train() got a {type(scheduler).__name__} as `scheduler`, its second argument: distill's order is "
                f"train(optimizer, scheduler, dataloader, num_epochs, callback), while TextBrewer's is "
                f"train(optimizer, dataloader, num_epochs, ...). Pass the data by name: "
                f"train(optimizer, dataloader=loader, num_epochs=3)"
            )

    def _check_optimizer_holds_student(self, optimizer: torch.optim.Optimizer) -> None:
        """An optimizer built over other parameters (the teacher's, a copy's) would train nothing, silently."""
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if trainable and not any(id(p) in held for p in trainable):
            raise DistillError(
                f"the optimizer holds none of the student's {len(trainable)} trainable parameters, so training "
                f"would change nothing; build it over the student passed to {type(self).__name__}, e.g. "
                f"torch.optim.AdamW(student.parameters(), lr=...)"
            )

    def _projection_groups(self) -> list[tuple[str, nn.Module, dict[str, Any]]]:
        """(match label, projection, optimizer group options) of each projection."""
        return []

    def _add_projection_groups(self, optimizer: torch.optim.Optimizer) -> None:
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for label, module, options in self._projection_groups():
            unknown = sorted(set(options) - set(optimizer.defaults))
            if unknown:  # torch keeps any key in a group and ignores it: a typo would train at the default lr
                key = unknown[0]
                raise DistillError(
                    f"{label}: proj group option {key!r} is not an option of {type(optimizer).__name__}"
                    f"{did_you_mean(key, optimizer.defaults)}; its groups take {sorted(optimizer.defaults)}: fix "
                    f"the 4th entry of the proj list (group_options)"
                )
            params = [p for p in module.parameters() if id(p) not in known]
            if params:
                optimizer.add_param_group({**options, "params": params})
                known.update(id(p) for p in params)


@dataclass
class _Session:
    """One training session: the plain modules, what the runtime prepared, the teacher source."""

    student: nn.Module  # the student as given (put back at the end)
    teachers: dict[Any, nn.Module]  # the teachers as given
    trainables: Trainables
    prepared_student: nn.Module
    modes: list[tuple[nn.Module, bool]]
    source: TeacherSource | None
