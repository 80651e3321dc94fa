"""What every distiller shares: placement, modes, the ``train`` entry point, checkpoints, resume.

Subclasses differ only in ``compute_loss`` and in which models they hold; all of them run the one
loop in :mod:`distill_core.loop`.
"""

from __future__ import annotations

import abc
import contextlib
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill_core.config import DistillationConfig, TrainingConfig
from distill_core.errors import DistillError
from distill_core.distillers.persistence import CheckpointMixin
from distill_core.loop import BatchSource, RunState, TrainingLoop
from distill_core.matching import unwrap
from distill_core.tracking import Tracker


def _resolve_device(config: TrainingConfig) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_writable(folder: str, field: str) -> None:
    """Fail at setup, before any training, if ``folder`` cannot be created or written."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".distill-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DistillError(
            f"TrainingConfig.{field}={folder!r} is not writable ({exc}); choose another folder"
        ) from None


class BaseDistiller(CheckpointMixin, abc.ABC):
    """Holds the models and runs training; subclasses define ``compute_loss``."""

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
        if train_config.local_rank >= 0:
            raise DistillError(
                "TrainingConfig.local_rank >= 0 (torchrun / DistributedDataParallel) is not supported yet; run in "
                "one process, or set data_parallel=True to use several GPUs of one machine"
            )
        self.train_config = train_config
        self.distill_config = distill_config
        self.device = _resolve_device(train_config)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DistillError(f"TrainingConfig.device={train_config.device!r} but CUDA is not available; use 'cpu'")
        if train_config.fp16 and self.device.type != "cuda":
            raise DistillError("TrainingConfig.fp16=True needs a CUDA device; set fp16=False on the CPU")
        self.is_main = True
        self.model_S = student
        self.teachers = {}
        self.projections = nn.ModuleList()
        self.custom_projections = nn.ModuleList()
        self.last_temperature: float | torch.Tensor | None = None
        self._checked_tasks: set[str | None] = set()  # adaptor outputs are checked on each task's first step
        self._in_context = False
        self._saved_modes: list[tuple[nn.Module, bool]] = []
        self.scaler = torch.amp.GradScaler("cuda") if train_config.fp16 else None

    # -- models and modes ------------------------------------------------------------------------
    def _place(self) -> None:
        """Move models to the device (and wrap them for DataParallel) once, at the start of a run."""
        self.model_S.to(self.device)
        self.projections.to(self.device)
        self.custom_projections.to(self.device)
        for teacher in self.teachers.values():
            teacher.to(self.device)
        if self.train_config.data_parallel and torch.cuda.device_count() > 1:
            if not isinstance(self.model_S, nn.DataParallel):
                self.model_S = nn.DataParallel(self.model_S)
            for key, teacher in self.teachers.items():
                if not isinstance(teacher, nn.DataParallel):
                    self.teachers[key] = nn.DataParallel(teacher)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.model_S, self.projections, self.custom_projections]

    @property
    def student(self) -> nn.Module:
        """The student model itself (unwrapped from DataParallel)."""
        return unwrap(self.model_S)

    def _enter_modes(self) -> None:
        modules = [*self.trainable_modules(), *self.teachers.values()]
        self._saved_modes = [(module, module.training) for module in modules]
        for module in self.trainable_modules():
            module.train()
        for teacher in self.teachers.values():
            teacher.eval()
        self._attach_hooks()

    def _exit_modes(self) -> None:
        for module, was_training in self._saved_modes:
            module.train(was_training)
        self._saved_modes = []
        self._detach_hooks()

    def _attach_hooks(self) -> None:
        """Subclasses with forward hooks (custom matches) attach them here."""

    def _detach_hooks(self) -> None:
        """Remove what ``_attach_hooks`` attached."""

    def __enter__(self) -> BaseDistiller:
        self._place()
        self._enter_modes()
        self._in_context = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._in_context = False
        self._exit_modes()

    # -- the step, as the loop sees it -----------------------------------------------------------
    @abc.abstractmethod
    def compute_loss(
        self, batch: Any, task: str | None, state: RunState, model_args: Mapping[str, Any]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the total loss of one micro-batch and its unweighted terms (aligned with term_names)."""

    @abc.abstractmethod
    def term_names(self) -> list[str]:
        """Names of the loss terms compute_loss returns, for logging."""

    def current_weights(self, state: RunState) -> list[float]:
        return [1.0] * len(self.term_names())

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for the forward passes and losses when ``fp16`` is on (CUDA only)."""
        if self.scaler is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.float16)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def make_tracker(self, state: RunState) -> Tracker:
        config = self.train_config
        return Tracker(
            log_dir=config.log_dir,
            log_steps=config.log_steps,
            progress_bar=config.progress_bar,
            total_steps=state.total_steps,
            initial_step=state.global_step,
            is_main=self.is_main,
            term_names=self.term_names(),
        )

    # -- train -----------------------------------------------------------------------------------
    def _source(self, dataloader: Any, dataloaders: Any, args: dict[str, Any]) -> BatchSource:
        if dataloader is None:
            raise TypeError("train() needs a dataloader")
        return BatchSource(dataloader)

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
        dataloaders: Mapping[str, Any] | None = None,
        tau: float = 1.0,
        **args: Any,
    ) -> RunState:
        """Train the student.

        :param optimizer: the student's optimizer; distill adds each projection's parameters to it as
            a group of its own (options from the match's ``proj``).
        :param scheduler: an LR scheduler instance, or a callable ``scheduler(optimizer)`` that builds
            one after the projection groups are added (an instance built before cannot see them).
        :param dataloader: the training batches (dicts call ``model(**batch)``, tuples ``model(*batch)``).
        :param num_epochs: how many passes over ``dataloader`` (``num_train_epochs`` is the same).
        :param callback: ``callback(model=student, step=global_step)`` after each checkpoint, with the
            student in eval mode; it may return a metric (see best-checkpoint tracking).
        :param num_steps: train for this many optimisation steps instead of epochs.
        :param max_grad_norm: clip the gradient norm of student and projections (None or <= 0: off).
        :param batch_postprocessor: applied to each batch before it moves to the device.
        :param scheduler_class: with ``scheduler_args``, built after the projection groups are added.
        :param resume_from: ``"latest"`` or a checkpoint path under ``output_dir/checkpoints``.
        :param args: extra keyword arguments for every model call.
        :returns: the final run state (global step, epoch, best metric, ...).
        """
        if num_train_epochs is not None:
            if num_epochs is not None and num_epochs != num_train_epochs:
                raise TypeError("pass num_epochs or num_train_epochs (the seed's spelling), not both")
            num_epochs = num_train_epochs
        if (num_epochs is None) == (num_steps is None):
            raise TypeError("train() needs exactly one of num_epochs or num_steps")
        for name, value in (("num_epochs", num_epochs), ("num_steps", num_steps)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Expected argument `{name}` to be a positive integer but got {value!r}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
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
                stacklevel=2,
            )
        self.tau = tau
        source = self._source(dataloader, dataloaders, args)
        _check_writable(self.train_config.output_dir, "output_dir")
        if self.train_config.log_dir is not None:
            _check_writable(self.train_config.log_dir, "log_dir")
        entered_here = not self._in_context
        if entered_here:
            self.__enter__()
        try:
            self._add_projection_groups(optimizer)
            scheduler = self._build_scheduler(optimizer, scheduler, scheduler_class, scheduler_args)
            resume = self._resolve_resume(resume_from)
            loop = TrainingLoop(
                self,
                optimizer=optimizer,
                scheduler=scheduler,
                source=source,
                num_epochs=num_epochs,
                num_steps=num_steps,
                callback=callback,
                max_grad_norm=max_grad_norm,
                batch_postprocessor=batch_postprocessor,
                model_args=args,
            )
            return loop.run(resume)
        finally:
            if entered_here:
                self.__exit__(None, None, None)

    def _projection_groups(self) -> list[tuple[nn.Module, dict[str, Any]]]:
        return []

    def _add_projection_groups(self, optimizer: torch.optim.Optimizer) -> None:
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for module, options in self._projection_groups():
            params = [p for p in module.parameters() if id(p) not in known]
            if params:
                optimizer.add_param_group({**options, "params": params})
                known.update(id(p) for p in params)

    def _build_scheduler(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scheduler_class: Any,
        scheduler_args: dict[str, Any] | None,
    ) -> Any:
        if scheduler_class is not None:
            if scheduler is not None:
                raise TypeError("pass scheduler or scheduler_class (+ scheduler_args), not both")
            return scheduler_class(optimizer, **(scheduler_args or {}))
        if scheduler is None:
            return None
        if hasattr(scheduler, "step") and hasattr(scheduler, "optimizer"):
            if scheduler.optimizer is not optimizer:
                raise ValueError("the scheduler was built for another optimizer than the one passed to train()")
            seen = len(getattr(scheduler, "base_lrs", optimizer.param_groups))
            if seen < len(optimizer.param_groups):
                # torch's schedulers keep one entry per group from their construction: such a
                # scheduler either fails at its first step or leaves the projections unscheduled
                raise ValueError(
                    f"the scheduler was built before distill added {len(optimizer.param_groups) - seen} projection "
                    f"parameter group(s) to the optimizer, so it cannot schedule their learning rate; pass "
                    f"scheduler=lambda opt: YourScheduler(opt, ...) or scheduler_class=..., scheduler_args=... so "
                    f"distill builds it after adding the groups"
                )
            return scheduler
        if callable(scheduler):
            return scheduler(optimizer)
        raise TypeError(f"scheduler must be an LR scheduler or a callable taking the optimizer, got {scheduler!r}")
