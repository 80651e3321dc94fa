"""A new run in an output_dir that holds another run's checkpoints: refused, or started over on request.

Without the check, a second run overwrote the first's gs1.pkl, best.pkl and step-1/2 states but left
its later states, which resume_from="latest" then took for the second run's. The runs here are the
tiny BERT run of ``tests/_resume_worker.py`` with a checkpoint every step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from distill_core import DistillError, TrainingConfig
from distill_core import checkpoint as ckpt
from tests import _resume_worker as worker


def train(output_dir: Path, *, steps: int, metrics: dict[int, float], resume_from: str | None = None, **options):
    """Train ``steps`` steps (checkpoint and evaluation every step; the callback returns ``metrics[step]``, or 0)."""
    distiller, optimizer, loader = worker.build(output_dir, ckpt_steps=1, **options)
    state = distiller.train(
        optimizer,
        None,
        loader,
        num_steps=steps,
        callback=lambda model, step: metrics.get(step, 0.0),
        resume_from=resume_from,
        output_hidden_states=True,
    )
    return distiller, state


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def first_run(tmp_path) -> Path:
    """A finished run of 4 steps whose best is step 3 (metric 0.9), beside a user's own files and logs."""
    out = tmp_path / "out"
    train(out, steps=4, metrics={3: 0.9}, log_dir=str(out / "logs"))
    (out / "notes.txt").write_text("mine")
    (out / ckpt.STATE_DIR / "README").write_text("mine too")
    assert [step for step, _ in ckpt.list_states(out)] == [1, 2, 3, 4]
    assert json.loads((out / "best.json").read_text())["step"] == 3
    return out


def test_a_new_run_is_refused_before_anything_is_trained_or_written_naming_the_folder_and_the_fixes(
    first_run,
) -> None:
    before = file_bytes(first_run)
    distiller, optimizer, loader = worker.build(first_run, ckpt_steps=1)
    error = worker.refused_training(distiller, optimizer, loader)
    assert isinstance(error, DistillError)
    message = str(error)
    assert f"TrainingConfig.output_dir={str(first_run)!r}" in message
    assert "full states of 4 steps under checkpoints/ (the latest: step 4)" in message
    assert "best.pkl and best.json (step 3, metric 0.9)" in message
    for fix in ("resume_from='latest'", "choose another output_dir", "TrainingConfig(overwrite_output_dir=True)"):
        assert fix in message
    assert file_bytes(first_run) == before  # the first run's files, byte for byte, and nothing new


def test_train_twice_on_one_distiller_is_refused_the_second_time(tmp_path) -> None:
    distiller, optimizer, loader = worker.build(tmp_path, ckpt_steps=2)
    distiller.train(optimizer, None, loader, num_steps=2, output_hidden_states=True)
    with pytest.raises(DistillError, match=r"holds the checkpoints of a previous run.*the latest: step 2"):
        distiller.train(optimizer, None, loader, num_steps=2, output_hidden_states=True)


def test_overwrite_output_dir_deletes_the_previous_runs_checkpoints_and_nothing_else(first_run) -> None:
    events = sorted((first_run / "logs").glob("events.out.tfevents.*"))
    assert events
    _, state = train(first_run, steps=2, metrics={1: 0.2, 2: 0.1}, overwrite_output_dir=True)
    assert state.global_step == 2 and state.best_step == 1
    # only the second run's files: no state, student or evaluation of the first run's steps 3 and 4
    assert [step for step, _ in ckpt.list_states(first_run)] == [1, 2]
    assert [step for step, _ in ckpt.list_students(first_run)] == [1, 2]
    assert [step for step, _ in ckpt.list_evaluations(first_run)] == [1, 2]
    assert json.loads((first_run / "best.json").read_text()) == {
        "step": 1,
        "metric": 0.2,
        "mode": "max",
        "file": "best.pkl",
    }
    # the user's files and the first run's TensorBoard events stay
    assert (first_run / "notes.txt").read_text() == "mine"
    assert (first_run / ckpt.STATE_DIR / "README").read_text() == "mine too"
    assert all(path.exists() for path in events)


def test_after_starting_over_resume_from_latest_continues_the_new_run_not_the_old(first_run) -> None:
    distiller, _ = train(first_run, steps=2, metrics={}, overwrite_output_dir=True)
    second = {key: value.clone() for key, value in distiller.student.state_dict().items()}
    # the first run's step-4 state would be refused here: it belongs to a run of 4 steps, this one makes 2
    resumed, state = train(first_run, steps=2, metrics={}, resume_from="latest")
    assert state.global_step == 2
    assert all(torch.equal(second[key], value) for key, value in resumed.student.state_dict().items())


def test_a_resumed_run_is_not_refused_and_continues_where_it_stopped(tmp_path) -> None:
    distiller, optimizer, loader = worker.build(tmp_path, ckpt_steps=1)

    def crash_at_2(model, step):
        if step == 2:
            raise KeyboardInterrupt("stopped after the checkpoint of step 2")
        return 0.5

    with pytest.raises(KeyboardInterrupt):
        distiller.train(optimizer, None, loader, num_steps=4, callback=crash_at_2, output_hidden_states=True)
    _, state = train(tmp_path, steps=4, metrics={4: 1.0}, resume_from="latest")
    assert state.global_step == 4 and state.best_step == 4
    assert [step for step, _ in ckpt.list_states(tmp_path)] == [1, 2, 3, 4]
    # an explicit path resumes too (here the finished run: nothing left to train)
    _, state = train(tmp_path, steps=4, metrics={}, resume_from=str(ckpt.state_path(tmp_path, 4)))
    assert state.global_step == 4


def test_latest_with_no_full_state_left_is_refused_when_student_files_or_the_best_remain(first_run) -> None:
    for _, path in ckpt.list_states(first_run) + ckpt.list_evaluations(first_run):
        path.unlink()  # the full states deleted to save space: "latest" finds nothing to resume
    with pytest.raises(DistillError) as caught:
        train(first_run, steps=2, metrics={}, resume_from="latest")
    message = str(caught.value)
    assert "holds files of a previous run but no full state to resume from" in message
    assert "student files gs*.pkl of 4 steps (the latest: step 4)" in message
    assert "overwrite_output_dir=True" in message
    assert "pass resume_from" not in message  # it was passed, and cannot help


def test_an_empty_or_unrelated_folder_is_not_a_previous_run(tmp_path) -> None:
    (tmp_path / "data.pkl").write_text("a user's file")
    (tmp_path / "gs.pkl").write_text("not a step")
    (tmp_path / "best.txt").write_text("not the best")
    assert ckpt.describe_run(tmp_path) is None and ckpt.run_files(tmp_path) == []
    _, state = train(tmp_path, steps=1, metrics={})
    assert state.global_step == 1 and (tmp_path / "data.pkl").read_text() == "a user's file"


def test_overwrite_output_dir_is_a_strict_boolean() -> None:
    assert TrainingConfig().overwrite_output_dir is False
    assert TrainingConfig.from_dict(TrainingConfig(overwrite_output_dir=True).to_dict()).overwrite_output_dir
    for bad in ("yes", 1, None):
        with pytest.raises(ValidationError, match="overwrite_output_dir"):
            TrainingConfig(overwrite_output_dir=bad)
