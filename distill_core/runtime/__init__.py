"""The runtime: the one object that owns device, precision, processes and rank-0 effects.

Like accelerate's ``prepare``, :meth:`Runtime.prepare` takes the trainable modules (student and
projections, one :class:`~distill_core.modules.Trainables`) and the teachers, places, wraps or
shards them, and returns the modules to call (:class:`Prepared`); it never assigns to a distiller.
The training loop then asks it to shard the data, run a micro-batch under autocast (and without
gradient synchronisation until the last one of a step), scale the backward, finish the gradients
(average, unscale, clip), step the optimizer, agree on decisions across ranks, and write logs on
rank 0. A distiller creates its runtime when training starts, not when it is built.

- Device: ``TrainingConfig.device``, else CUDA (``cuda:<local rank>`` under torchrun) when available.
- Precision: ``TrainingConfig.mixed_precision`` ("no" | "fp16" | "bf16"; see :mod:`.precision`).
- Processes: under ``torchrun`` or an initialised process group (see :mod:`.distributed`).
- Checkpoints: :mod:`.checkpointing` (what an evaluation decides is :mod:`distill_core.evaluation`'s).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distill_core import checkpoint as ckpt
from distill_core.errors import DistillError
from distill_core.runtime import distributed as dist_utils
from distill_core.runtime.checkpointing import Checkpointer
from distill_core.runtime.precision import Precision
from distill_core.tracking import Tracker

if TYPE_CHECKING:
    from distill_core.config import TrainingConfig
    from distill_core.modules import Trainables

__all__ = ["Checkpointer", "Precision", "Prepared", "Runtime", "move_to_device"]

_NO_CONTEXT = contextlib.nullcontext()


@dataclass(frozen=True)
class Prepared:
    """What :meth:`Runtime.prepare` returns: the modules to call during training.

    ``student`` is the student itself, or its DistributedDataParallel / DataParallel wrapper;
    ``teachers`` the teachers by key (DataParallel-wrapped on several GPUs without torchrun).
    """

    student: nn.Module
    teachers: dict[Any, nn.Module]


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if type(batch) is dict or isinstance(batch, Mapping):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(value, device) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


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


def _check_no_previous_run(config: TrainingConfig, resume_from: str | os.PathLike[str] | None) -> None:
    """Refuse a fresh run in an ``output_dir`` holding another run's checkpoints, unless told to start over.

    The run is fresh without ``resume_from``, and with ``"latest"`` when there is no full state to
    resume (the student files or best of a run may still be there). An explicit checkpoint path resumes.
    """
    output_dir = config.output_dir
    if config.overwrite_output_dir:
        return
    if resume_from is not None and (str(resume_from) != "latest" or ckpt.list_states(output_dir)):
        return
    held = ckpt.describe_run(output_dir)
    if held is None:
        return
    start_over = "to delete them and start over, set TrainingConfig(overwrite_output_dir=True)"
    if resume_from is None:
        raise DistillError(
            f"TrainingConfig.output_dir={output_dir!r} holds the checkpoints of a previous run: {held}. This train() "
            f"call starts a new run, which would overwrite some of them and leave the others for "
            f"resume_from='latest' to pick. To continue that run, pass resume_from='latest' to train(); to keep it, "
            f"choose another output_dir; {start_over}"
        )
    raise DistillError(
        f"TrainingConfig.output_dir={output_dir!r} holds files of a previous run but no full state to resume from: "
        f"{held}. resume_from='latest' therefore starts a new run, which would overwrite them. To keep them, "
        f"choose another output_dir; {start_over}"
    )


class Runtime:
    """Device, precision, process group, model wrapping and rank-0 effects of one distiller."""

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
        self.process = dist_utils.join_process_group(config.local_rank, config.device)
        self.device = self._resolve_device()
        self.precision = Precision(config.precision_mode(), self.device)
        if self.precision.mode == "fp16" and self.device.type == "cpu" and config.fp16:
            raise DistillError(
                "TrainingConfig.fp16=True (the seed API's switch) means CUDA float16; on the CPU use "
                "mixed_precision='bf16' (or 'fp16', which the CPU also runs, with a GradScaler)"
            )
        distributed = self.process.distributed
        self.student_sharded = distributed and "student" in config.fsdp
        self.teachers_sharded = distributed and "teachers" in config.fsdp
        if config.fsdp and not distributed:
            raise DistillError(
                f"TrainingConfig.fsdp={list(config.fsdp)} shards models across processes, but this run is a single "
                f"process; launch it with `torchrun --nproc_per_node N`, or set fsdp=[]"
            )
        # a sharded student's forward needs every rank, so the callback then runs on every rank
        self.callback_on_every_rank = config.callback_on_all_ranks or self.student_sharded
        self._shared_params: list[nn.Parameter] = []  # trained, but outside DDP/FSDP: averaged by hand
        self._replaced_params: dict[int, nn.Parameter] = {}  # id(parameter before sharding) -> sharded one
        self._ddp = False

    # -- where this process stands ---------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.process.world_size

    @property
    def rank(self) -> int:
        return self.process.rank

    @property
    def is_main(self) -> bool:
        return self.process.is_main

    @property
    def distributed(self) -> bool:
        return self.process.distributed

    def _resolve_device(self) -> torch.device:
        config = self.config
        if config.device is not None:
            device = torch.device(config.device)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise DistillError(f"TrainingConfig.device={config.device!r} but CUDA is not available; use 'cpu'")
            if device.type == "cuda" and self.process.distributed and device.index is None:
                device = torch.device("cuda", self.process.local_rank)
            return device
        if torch.cuda.is_available():
            return torch.device("cuda", self.process.local_rank) if self.process.distributed else torch.device("cuda")
        return torch.device("cpu")

    def check_output_folders(self, resume_from: str | os.PathLike[str] | None = None) -> None:
        """Fail at setup, on every rank, if a folder is unwritable or a fresh run would overwrite another's.

        Rank 0 looks (it writes every file); its verdict is shared, so no rank goes on to wait for a
        rank that stopped.
        """
        problem: DistillError | None = None
        if self.is_main:
            try:
                _check_writable(self.config.output_dir, "output_dir")
                if self.config.log_dir is not None:
                    _check_writable(self.config.log_dir, "log_dir")
                _check_no_previous_run(self.config, resume_from)
            except DistillError as exc:
                problem = exc
        if self.distributed:
            message = self.broadcast(None if problem is None else str(problem))
            if message is not None and problem is None:
                problem = DistillError(message)
        if problem is not None:
            raise problem

    def clear_previous_run(self) -> None:
        """With ``overwrite_output_dir``, delete a previous run's checkpoints before a fresh run writes any."""
        if not self.config.overwrite_output_dir:
            return  # the setup check refused any previous run's files
        if self.is_main:
            ckpt.remove_run(self.config.output_dir)
        self.barrier()  # no rank reads output_dir while rank 0 deletes

    # -- models ----------------------------------------------------------------------------------
    def prepare(
        self, trainables: Trainables, teachers: Mapping[Any, nn.Module], *, find_unused_parameters: bool = False
    ) -> Prepared:
        """Place, wrap or shard the modules as the device, process group and config ask; return what to call.

        The student is wrapped in DistributedDataParallel (or DataParallel), or sharded in place with
        FSDP2; projections follow the student's device and dtype; teachers are placed (or sharded)
        and never wrapped in DDP. ``trainables`` keeps the plain modules; the returned
        :class:`Prepared` holds the ones to call. :meth:`release` ends what this began.
        """
        config, device = self.config, self.device
        student = trainables.student
        if self.student_sharded:
            before = {name: param for name, param in student.named_parameters()}
            dist_utils.shard_fsdp2(student, device)
            # FSDP2 registers new (sharded) parameters: an optimizer built before must be pointed at them
            self._replaced_params = {
                id(before[name]): param for name, param in student.named_parameters() if before.get(name) is not param
            }
        else:
            student.to(device)
        student_dtype = _floating_dtype(student)
        self.precision.check_weights(student_dtype)
        for projections in (trainables.projections, trainables.custom_projections):
            projections.to(device=device, dtype=student_dtype)  # projections follow the student's dtype
        for teacher in teachers.values():
            if self.teachers_sharded:
                dist_utils.shard_fsdp2(teacher, device)
            else:
                teacher.to(device)
        prepared_student: nn.Module = student
        prepared_teachers = dict(teachers)
        if self.distributed and not self.student_sharded:
            find_unused = config.find_unused_parameters
            if find_unused is None:
                find_unused = find_unused_parameters
            prepared_student = dist_utils.wrap_ddp(student, device, find_unused)
            self._ddp = True
        elif config.data_parallel and device.type == "cuda" and torch.cuda.device_count() > 1:
            prepared_student = nn.DataParallel(student)
            prepared_teachers = {key: nn.DataParallel(teacher) for key, teacher in teachers.items()}
        self._shared_params = [
            p
            for module in (trainables.projections, trainables.custom_projections)
            for p in module.parameters()
            if p.requires_grad
        ]
        return Prepared(prepared_student, prepared_teachers)

    def release(self) -> None:
        """End a :meth:`prepare`: the wrappers it returned are no longer used (a sharded model stays sharded)."""
        self._ddp = False
        self._shared_params = []

    def rebind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Point an optimizer built before the student was sharded at the sharded parameters."""
        if not self._replaced_params:
            return
        for group in optimizer.param_groups:
            for index, param in enumerate(group["params"]):
                new = self._replaced_params.get(id(param))
                if new is None:
                    continue
                if optimizer.state.get(param):
                    raise DistillError(
                        "the optimizer already holds state for the student's parameters, which FSDP2 has replaced by "
                        "sharded ones; pass a fresh optimizer (resume_from restores its state)"
                    )
                group["params"][index] = new

    # -- data ------------------------------------------------------------------------------------
    def shard_data(self, loader: Any, role: str, seed: int) -> Any:
        """The loader each rank reads (a DistributedSampler added when needed); unchanged in one process."""
        if not self.distributed or self.config.distributed_sampler == "off":
            return loader
        return dist_utils.shard_dataloader(loader, self.process, seed, role)

    def shared_seed(self) -> int:
        """A seed drawn on rank 0 from torch's RNG and shared by every rank (the data order's seed)."""
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
        return self.broadcast(seed) if self.distributed else seed

    def to_device(self, batch: Any) -> Any:
        return move_to_device(batch, self.device)

    # -- one optimisation step -------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return self.precision.autocast()

    def micro_batch(self, student: nn.Module, *, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Run one micro-batch's forward and backward; gradients are synchronised on the last one only.

        ``student``: the prepared student (what :meth:`prepare` returned).
        """
        if last or not self.distributed:
            return _NO_CONTEXT  # the common case costs no generator
        return self._accumulating(student)

    @contextlib.contextmanager
    def _accumulating(self, student: nn.Module) -> Iterator[None]:
        if self._ddp:
            with student.no_sync():
                yield
            return
        if self.student_sharded:
            student.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                student.set_requires_gradient_sync(True)
            return
        yield

    def backward(self, loss: torch.Tensor) -> None:
        self.precision.backward(loss)

    def finish_gradients(
        self, optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter], max_grad_norm: float | None
    ) -> None:
        """Average the hand-synchronised gradients across ranks, then unscale and clip when asked."""
        if self.distributed and self._shared_params:
            dist_utils.average_gradients(self._shared_params, self.world_size)
        if max_grad_norm is None:
            return
        self.precision.unscale(optimizer)
        if self.student_sharded:
            _clip_mixed(parameters, max_grad_norm)
        else:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.precision.step(optimizer)

    # -- agreeing across ranks -------------------------------------------------------------------
    def sum_across_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        return dist_utils.all_reduce_sum(tensor) if self.distributed else tensor

    def any_rank(self, flag: torch.Tensor) -> bool:
        """Whether ``flag`` (a 0-d bool/int tensor) is true on any rank (one host read)."""
        if self.distributed:
            flag = dist_utils.all_reduce_max(flag.to(torch.int32).reshape(1))
        return bool(flag.any())

    def broadcast(self, value: Any) -> Any:
        return dist_utils.broadcast_object(value) if self.distributed else value

    def gather(self, value: Any) -> list[Any]:
        return dist_utils.gather_objects(value) if self.distributed else [value]

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    # -- rank-0 effects --------------------------------------------------------------------------
    def make_tracker(self, term_names: list[str], total_steps: int, initial_step: int) -> Tracker:
        config = self.config
        return Tracker(
            log_dir=config.log_dir,
            log_steps=config.log_steps,
            progress_bar=config.progress_bar,
            total_steps=total_steps,
            initial_step=initial_step,
            is_main=self.is_main,
            term_names=term_names,
            sum_across_ranks=self.sum_across_ranks if self.distributed else None,
            world_size=self.world_size,
        )


def _floating_dtype(module: nn.Module) -> torch.dtype:
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.get_default_dtype()


def _clip_mixed(parameters: list[nn.Parameter], max_norm: float) -> None:
    """Clip the global gradient norm of sharded (DTensor) and plain parameters together."""
    from torch.distributed.tensor import DTensor

    with_grad = [p for p in parameters if p.grad is not None]
    sharded = [p for p in with_grad if isinstance(p.grad, DTensor)]
    plain = [p for p in with_grad if not isinstance(p.grad, DTensor)]
    norms = []
    if sharded:
        norm = torch.nn.utils.get_total_norm([p.grad for p in sharded])
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    if plain:
        norm = torch.nn.utils.get_total_norm([p.grad for p in plain])
        norms.append(norm.to(norms[0].device) if norms else norm)
    if not norms:
        return
    total = torch.linalg.vector_norm(torch.stack(norms))
    if sharded:
        torch.nn.utils.clip_grads_with_norm_(sharded, max_norm, total)
    if plain:
        torch.nn.utils.clip_grads_with_norm_(plain, max_norm, total.to(plain[0].grad.device))
