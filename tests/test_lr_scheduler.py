"""LR schedules last the run's real number of optimisation steps (issue 22, item 3).

The torchrun side (the README's ``lambda opt: ...(opt, 0, len(loader) * epochs)`` under two
processes) is in tests/test_distributed.py; here the forms that give a schedule its length.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from distill_core import BasicTraining, TrainingConfig
from distill_core.batches import BatchSource, TaskMixture
from distill_core.runtime.distributed import ProcessGroupInfo, shard_dataloader
from tests.tiny import dict_batches, tiny_bert, tiny_data

LR = 0.01


def classifier_adaptor(batch, outputs):
    return {"logits": outputs.logits, "losses": [outputs.loss]}


def train(tmp_path, *, accumulation: int = 1, **scheduling) -> torch.optim.Optimizer:
    """Four batches, two epochs: 8 steps, or 4 with two micro-batches a step."""
    model = tiny_bert(16, 1, 2, seed=1)
    config = TrainingConfig(
        output_dir=str(tmp_path / "out"),
        device="cpu",
        progress_bar=False,
        gradient_accumulation_steps=accumulation,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    BasicTraining(config, model, classifier_adaptor).train(
        optimizer, dataloader=dict_batches(tiny_data(16), 4), num_epochs=2, **scheduling
    )
    return optimizer


@pytest.mark.parametrize("accumulation, steps", [(1, 8), (2, 4)])
def test_a_factory_taking_num_training_steps_gets_the_runs_step_count(tmp_path, accumulation, steps) -> None:
    seen = []

    def factory(optimizer, num_training_steps):
        seen.append(num_training_steps)
        return get_linear_schedule_with_warmup(optimizer, 0, num_training_steps)

    optimizer = train(tmp_path, accumulation=accumulation, scheduler=factory)
    assert seen == [steps]
    assert optimizer.param_groups[0]["lr"] == 0.0  # the linear decay ended with the run


def test_transformers_schedule_as_a_partial_ends_with_the_run_and_a_given_length_is_kept(tmp_path) -> None:
    optimizer = train(
        tmp_path / "auto", scheduler=functools.partial(get_linear_schedule_with_warmup, num_warmup_steps=2)
    )
    assert optimizer.param_groups[0]["lr"] == 0.0
    optimizer = train(
        tmp_path / "given",
        scheduler=functools.partial(get_linear_schedule_with_warmup, num_warmup_steps=0, num_training_steps=16),
    )
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR / 2)  # 8 of its 16 steps


@pytest.mark.parametrize(
    "scheduler_class, scheduler_args, final_lr",
    [
        (torch.optim.lr_scheduler.CosineAnnealingLR, {"T_max": "auto"}, 0.0),
        (torch.optim.lr_scheduler.CosineAnnealingLR, {}, 0.0),  # T_max is required: filled
        (torch.optim.lr_scheduler.PolynomialLR, {"total_iters": "auto"}, 0.0),
        (get_linear_schedule_with_warmup, {"num_warmup_steps": 1}, 0.0),
    ],
)
def test_scheduler_class_step_counts_left_open_get_the_runs_steps(
    tmp_path, scheduler_class, scheduler_args, final_lr
) -> None:
    optimizer = train(tmp_path, scheduler_class=scheduler_class, scheduler_args=scheduler_args)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(final_lr, abs=1e-12)


def test_a_step_count_is_filled_only_where_left_open(tmp_path) -> None:
    """LinearLR decaying to 0 over a 4-step run: total_iters=None lasts the run; its default (5) and a given
    16 are kept, so the run ends 4/5 and 4/16 of the way down."""
    ends = [
        train(
            tmp_path / str(index),
            accumulation=2,
            scheduler_class=torch.optim.lr_scheduler.LinearLR,
            scheduler_args={"start_factor": 1.0, "end_factor": 0.0, **total},
        ).param_groups[0]["lr"]
        for index, total in enumerate([{"total_iters": None}, {}, {"total_iters": 16}])
    ]
    assert ends == pytest.approx([0.0, LR * 0.2, LR * 0.75], abs=1e-12)


def test_one_cycle_without_total_steps_lasts_the_run(tmp_path) -> None:
    """OneCycleLR's total_steps defaults to None (then it needs epochs and steps_per_epoch)."""
    optimizer = train(tmp_path, scheduler_class=torch.optim.lr_scheduler.OneCycleLR, scheduler_args={"max_lr": LR})
    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    schedule = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=LR, total_steps=8)
    for _ in range(8):
        reference.step()
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"], rel=1e-9)


def test_a_scheduler_class_as_the_factory_gets_its_required_step_count(tmp_path) -> None:
    optimizer = train(tmp_path, scheduler=torch.optim.lr_scheduler.CosineAnnealingLR)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


class _TwoRanks:
    """What BatchSource.shard asks of the runtime, as rank 0 of two processes (no process group needed)."""

    def shard_data(self, loader, role, seed):
        return shard_dataloader(loader, ProcessGroupInfo(world_size=2, rank=0), seed, role)


def test_the_users_own_loader_reports_this_ranks_batches_while_the_scheduler_is_built() -> None:
    loader = DataLoader(list(range(16)), batch_size=4)
    source = BatchSource(loader)
    source.shard(_TwoRanks(), seed=0)
    with source.users_loaders_as_read():
        assert len(loader) == 2  # what a scheduler factory's len(loader) sees: this rank's share
        assert [batch.tolist() for batch in loader] == [[0, 2, 4, 6], [8, 10, 12, 14]]
    assert len(loader) == 4 and [batch.tolist() for batch in loader][0] == [0, 1, 2, 3]  # the user's again
    with pytest.raises(RuntimeError, match="boom"):
        with source.users_loaders_as_read():
            raise RuntimeError("boom")
    assert len(loader) == 4  # given back after a failing factory too


def test_every_task_loader_reports_this_ranks_batches_while_the_scheduler_is_built() -> None:
    loaders = {"a": DataLoader(list(range(16)), batch_size=4), "b": DataLoader(list(range(8)), batch_size=4)}
    mixture = TaskMixture(loaders, tau=1.0)
    mixture.shard(_TwoRanks(), seed=0)
    with mixture.users_loaders_as_read():
        assert [len(loaders["a"]), len(loaders["b"])] == [2, 1]
    assert [len(loaders["a"]), len(loaders["b"])] == [4, 2]
