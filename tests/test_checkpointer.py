"""The Checkpointer on its own: given a runtime, the configs and the Trainables, no distiller.

The end-to-end resume tests are in test_checkpoint.py; these check that the Checkpointer saves and
restores exactly what it is given, under the full-state keys and names earlier versions wrote.
"""

from __future__ import annotations

import torch
from torch import nn

from distill_core import TrainingConfig
from distill_core import checkpoint as ckpt
from distill_core.loop import RunState
from distill_core.modules import Trainables
from distill_core.runtime import Checkpointer, Runtime


def _trainables(seed: int) -> Trainables:
    torch.manual_seed(seed)
    student = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    return Trainables(student, nn.ModuleList([nn.Linear(4, 3), nn.Identity()]), nn.ModuleList([nn.Linear(2, 2)]))


def _train_one_step(trainables: Trainables, optimizer: torch.optim.Optimizer) -> None:
    loss = trainables.student(torch.randn(5, 4)).sum() + trainables.projections[0](torch.randn(5, 4)).sum()
    loss = loss + trainables.custom_projections[0](torch.randn(5, 2)).sum()
    loss.backward()
    optimizer.step()


def test_save_then_restore_into_other_modules_gives_back_every_state(tmp_path) -> None:
    config = TrainingConfig(output_dir=str(tmp_path), progress_bar=False)
    runtime = Runtime(config)
    saved_trainables = _trainables(0)
    optimizer = torch.optim.AdamW(saved_trainables.parameters(), lr=0.1)
    _train_one_step(saved_trainables, optimizer)
    state = RunState(global_step=3, total_steps=10, best_metric=0.5, best_step=2)
    Checkpointer(runtime, config, None, saved_trainables).save(state, optimizer, None)

    full = ckpt.load_state(ckpt.state_path(tmp_path, 3))
    assert {"student", "projections", "custom_projections", "optimizer", "run_state", "rng", "config"} <= set(full)
    assert set(full["projections"]) == {"0.weight", "0.bias"}  # as ModuleList.state_dict() names them
    assert ckpt.load_student(ckpt.student_path(tmp_path, 3)).keys() == saved_trainables.student.state_dict().keys()

    trainables = _trainables(1)
    other_optimizer = torch.optim.AdamW(trainables.parameters(), lr=0.1)
    restored = RunState(total_steps=10)
    Checkpointer(runtime, config, None, trainables).restore(full, other_optimizer, None, restored)
    for expected, actual in zip(saved_trainables.state_dict().values(), trainables.state_dict().values()):
        assert torch.equal(expected, actual)
    assert other_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    assert (restored.global_step, restored.best_metric, restored.best_step) == (3, 0.5, 2)


def test_trainables_keep_the_parameter_names_of_the_sharded_optimizer_state() -> None:
    # a sharded (FSDP2) run's optimizer state is keyed by these names; they were a ModuleDict's before
    trainables = _trainables(0)
    before = nn.ModuleDict(
        {
            "student": trainables.student,
            "projections": trainables.projections,
            "custom_projections": trainables.custom_projections,
        }
    )
    assert [name for name, _ in trainables.named_parameters()] == [name for name, _ in before.named_parameters()]
