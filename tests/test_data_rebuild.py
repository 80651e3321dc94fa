"""The DataLoaders distill rebuilds (a rank's share under torch.distributed, the teacher cache's keyed
loader) keep every option the user set; only the sampling changes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from distill_core.runtime.distributed import ProcessGroupInfo, shard_dataloader
from distill_core.teacher_cache.keys import KeyedLoader


def _collate(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"x": torch.stack(rows)}


def _seed_workers(worker_id: int) -> None:
    torch.manual_seed(worker_id)


def _user_loader(**extra) -> DataLoader:
    return DataLoader(
        [torch.full((2,), float(index)) for index in range(10)],
        batch_size=3,
        shuffle=True,
        collate_fn=_collate,
        worker_init_fn=_seed_workers,
        generator=torch.Generator().manual_seed(7),
        timeout=0,
        pin_memory_device="cpu",
        **extra,
    )


def _sharded(loader: DataLoader) -> DataLoader:
    return shard_dataloader(loader, ProcessGroupInfo(world_size=2, rank=1), seed=3, role="the dataloader")


@pytest.mark.parametrize("rebuild", [_sharded, lambda loader: KeyedLoader(loader, "the dataloader").loader])
def test_a_rebuilt_dataloader_keeps_the_users_options(rebuild) -> None:
    user = _user_loader()
    rebuilt = rebuild(user)
    assert rebuilt is not user and rebuilt.dataset is user.dataset
    for option in ("collate_fn", "worker_init_fn", "generator", "pin_memory_device", "timeout", "num_workers"):
        assert getattr(rebuilt, option) == getattr(user, option), option
    assert rebuilt.generator is user.generator  # it seeds the workers: dropping it changed their randomness
    assert next(iter(rebuilt))["x"].shape == (3, 2)


def test_the_rank_share_keeps_the_batch_size_and_reads_every_other_example() -> None:
    rebuilt = _sharded(_user_loader(drop_last=True))
    assert isinstance(rebuilt.sampler, DistributedSampler) and rebuilt.sampler.rank == 1
    assert rebuilt.batch_size == 3 and rebuilt.drop_last
    seen = [int(value) for batch in rebuilt for value in batch["x"][:, 0]]
    assert len(seen) == 3 and len(set(seen)) == 3  # 5 of the 10 examples, one full batch of 3 kept
