"""Processes: the torch.distributed process group, model wrapping, data sharding, collectives.

Under ``torchrun`` (or any initialised process group) the student runs in
``DistributedDataParallel``, or is sharded with FSDP2 (``fully_shard``) per transformer block when
``TrainingConfig.fsdp`` names it. Teachers need no gradient synchronisation, so they are never wrapped
in DDP; a teacher too large for one device is sharded with FSDP2 the same way. Projections are small
modules used outside the student's forward: their gradients are averaged across ranks with one
all-reduce at each optimisation step. distill adds no launcher: torch.distributed is the engine.
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from distill_core.data import rebuild_dataloader
from distill_core.errors import DistillError

#: environment variables torchrun sets for every process
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class ProcessGroupInfo:
    """Where this process stands: world size, global rank, rank on its machine."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _TORCHRUN_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def join_process_group(config_local_rank: int, device: str | None) -> ProcessGroupInfo:
    """Join (initialising it if needed) the process group this process was launched into.

    An initialised group is used as it is. Under torchrun, distill initialises it itself with gloo on
    the CPU and nccl on CUDA. ``TrainingConfig.local_rank >= 0`` without either is an error.
    """
    if dist.is_available() and dist.is_initialized():
        local = config_local_rank if config_local_rank >= 0 else int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return ProcessGroupInfo(dist.get_world_size(), dist.get_rank(), local)
    if dist.is_available() and launched_by_torchrun():
        local = int(os.environ["LOCAL_RANK"])
        if config_local_rank >= 0 and config_local_rank != local:
            raise DistillError(
                f"TrainingConfig.local_rank={config_local_rank} but torchrun started this process as local rank "
                f"{local}; leave local_rank at -1 under torchrun (distill reads LOCAL_RANK)"
            )
        on_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        if on_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if on_cuda else "gloo")
        # the group distill made is distill's to end: left to the interpreter's teardown, its threads can
        # abort the process after training finished (SIGABRT, "terminate called without an active exception")
        atexit.register(_destroy_own_group)
        return ProcessGroupInfo(dist.get_world_size(), dist.get_rank(), local)
    if config_local_rank >= 0:
        raise DistillError(
            f"TrainingConfig.local_rank={config_local_rank} but this process was not started by torchrun and no "
            f"torch.distributed process group is initialised; launch with `torchrun --nproc_per_node N script.py` "
            f"(local_rank can stay -1: distill reads it from the environment), or unset local_rank"
        )
    return ProcessGroupInfo()


def _destroy_own_group() -> None:
    """At exit: destroy the process group :func:`join_process_group` initialised (if still there).

    Not after an unhandled exception (``sys.last_value`` is set then): the other ranks may be inside a
    collective, destroying the group could wait for them, and torchrun stops the group anyway.
    """
    if dist.is_initialized() and getattr(sys, "last_value", None) is None:
        dist.destroy_process_group()


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of ``model`` to shard one by one (FSDP2's unit of all-gather).

    Hugging Face models name their block classes in ``_no_split_modules``; otherwise the children of
    every ``nn.ModuleList`` (the usual container of layers) are taken.
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    if names:
        blocks = [module for module in model.modules() if type(module).__name__ in names]
        if blocks:
            return blocks
    return [child for module in model.modules() if isinstance(module, nn.ModuleList) for child in module]


def shard_fsdp2(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard ``model`` in place with FSDP2: each transformer block, then the rest as the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


# -- data ------------------------------------------------------------------------------------------
def shard_dataloader(loader: Any, info: ProcessGroupInfo, seed: int, role: str) -> Any:
    """Return ``loader`` with a ``DistributedSampler``, so each rank reads its own share of the data.

    A DataLoader that already has one is kept. A plain DataLoader (sequential or random sampler) is
    rebuilt with ``DistributedSampler(shuffle=<random>, seed=seed)``, so every rank draws the same
    permutation and takes every ``world_size``-th example of it. Anything else is an error with the fix.
    """
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

    if not isinstance(loader, DataLoader):
        raise DistillError(
            f"under torch.distributed ({info.world_size} processes) {role} must be a torch DataLoader so distill can "
            f"give each rank its share (a DistributedSampler), but it is a {type(loader).__name__}; pass a "
            f"DataLoader, or shard the data yourself and set TrainingConfig.distributed_sampler='off'"
        )
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    sampler = loader.sampler
    batch_sampler = loader.batch_sampler
    custom_batches = batch_sampler is not None and type(batch_sampler).__name__ != "BatchSampler"
    if custom_batches or not isinstance(sampler, (SequentialSampler, RandomSampler)):
        raise DistillError(
            f"{role} uses a custom sampler ({type(sampler).__name__}) or batch sampler, which distill cannot split "
            f"across {info.world_size} processes; build the DataLoader with a torch.utils.data.DistributedSampler "
            f"(distill calls its set_epoch), or set TrainingConfig.distributed_sampler='off' if each rank already "
            f"reads its own data"
        )
    distributed_sampler = DistributedSampler(
        loader.dataset,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=isinstance(sampler, RandomSampler),
        seed=seed,
        drop_last=loader.drop_last,
    )
    return rebuild_dataloader(
        loader, batch_size=loader.batch_size, sampler=distributed_sampler, drop_last=loader.drop_last
    )


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch`` on a DataLoader's sampler (DistributedSampler) if it has one."""
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    if inner is not None and inner is not sampler and hasattr(inner, "set_epoch"):
        inner.set_epoch(epoch)


# -- collectives -----------------------------------------------------------------------------------
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (in place; returned for chaining). No host sync on CUDA."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_object(value: Any, source: int = 0) -> Any:
    """Rank ``source``'s ``value`` on every rank (small Python objects: decisions, metrics)."""
    box = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def average_gradients(parameters: list[nn.Parameter], world_size: int) -> None:
    """Average the gradients of plain (not DDP/FSDP) parameters across ranks, in one all-reduce."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world_size)
    offset = 0
    for grad in grads:
        count = grad.numel()
        grad.copy_(flat[offset : offset + count].view_as(grad))
        offset += count
