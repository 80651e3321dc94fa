"""The Evaluator on its own: a real Runtime, Checkpointer and tiny student, no distiller and no loop.

Each test calls ``Evaluator.evaluate`` as the loop does at an evaluation step, with a callback that
returns a metric, and checks what a user relies on: ``best.pkl``/``best.json``, the run state's
bookkeeping, early stopping, the logged ``eval/metric``, the evaluation record beside a full state,
and the RNG streams training continues with.
"""

from __future__ import annotations

import json
import math
import random
import types
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from distill_core import TrainingConfig
from distill_core import checkpoint as ckpt
from distill_core.evaluation import Evaluator, is_better, metric_from
from distill_core.loop import RunState
from distill_core.modules import Trainables
from distill_core.runtime import Checkpointer, Runtime
from tests.tb_reader import read_scalars


def _setup(tmp_path, **training: Any) -> types.SimpleNamespace:
    """A run's evaluation parts over a tiny student with dropout (no distiller, no loop)."""
    folders = {"output_dir": str(tmp_path / "out"), "log_dir": str(tmp_path / "logs")}
    config = TrainingConfig(**folders, progress_bar=False, **training)
    runtime = Runtime(config)
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    trainables = Trainables(student, nn.ModuleList([nn.Linear(4, 3)]), nn.ModuleList())
    checkpointer = Checkpointer(runtime, config, None, trainables)
    evaluator = Evaluator(runtime, config, checkpointer, trainables)
    tracker = runtime.make_tracker(["total"], total_steps=100, initial_step=0)
    return types.SimpleNamespace(
        config=config, runtime=runtime, student=student, trainables=trainables, checkpointer=checkpointer,
        evaluator=evaluator, tracker=tracker, state=RunState(total_steps=100), output=tmp_path / "out",
    )  # fmt: skip


def _evaluate_each(run: types.SimpleNamespace, metrics: Iterable[Any]) -> list[bool]:
    """Evaluate at steps 1, 2, ...: before each, the student's weights change (so each step's student
    differs); the callback returns that step's metric. Returns what evaluate returned each time."""
    metrics = list(metrics)
    stops = []
    for step, _metric in enumerate(metrics, start=1):
        with torch.no_grad():
            for parameter in run.student.parameters():
                parameter.add_(0.01 * step)
        run.state.global_step = step
        stop = run.evaluator.evaluate(run.state, lambda model, step: metrics[step - 1], run.tracker, checkpointed=False)
        stops.append(stop)
    return stops


def _assert_same_state(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


# -- the metric ------------------------------------------------------------------------------------
def test_metric_from_takes_numbers_and_one_element_tensors_and_nothing_else() -> None:
    assert metric_from(0.5) == 0.5 and metric_from(3) == 3.0 and metric_from(np.float32(0.25)) == 0.25
    assert metric_from(torch.tensor([0.75])) == 0.75
    assert metric_from(None) is None and metric_from(True) is None  # a bool is not a metric
    with pytest.warns(UserWarning, match="the callback returned a dict; return a number"):
        assert metric_from({"accuracy": 0.9}) is None
    with pytest.warns(UserWarning, match="returned a Tensor"):
        assert metric_from(torch.tensor([0.1, 0.2])) is None


def test_is_better_follows_the_mode_and_nan_never_improves() -> None:
    assert is_better(0.5, None, "max") and is_better(0.5, None, "min")
    assert is_better(0.6, 0.5, "max") and not is_better(0.4, 0.5, "max") and not is_better(0.5, 0.5, "max")
    assert is_better(0.4, 0.5, "min") and not is_better(0.6, 0.5, "min") and not is_better(0.5, 0.5, "min")
    assert not is_better(math.nan, None, "max") and not is_better(math.nan, 0.5, "min")


# -- best checkpoint -------------------------------------------------------------------------------
def test_best_files_are_written_for_improvements_only(tmp_path) -> None:
    run = _setup(tmp_path)
    best_json, best_pkl = run.output / "best.json", run.output / "best.pkl"
    students = {}
    for step, metric in enumerate([0.1, 0.5, 0.3, math.nan, 0.7, 0.6], start=1):
        with torch.no_grad():
            for parameter in run.student.parameters():
                parameter.add_(0.01)
        students[step] = {key: value.clone() for key, value in run.student.state_dict().items()}
        before = best_json.read_text() if best_json.exists() else None
        run.state.global_step = step
        run.evaluator.evaluate(run.state, lambda model, step, metric=metric: metric, run.tracker, checkpointed=False)
        improved = step in (1, 2, 5)
        if improved:
            info = {"step": step, "metric": metric, "mode": "max", "file": "best.pkl"}
            assert json.loads(best_json.read_text()) == info
        else:
            assert best_json.read_text() == before  # not rewritten
        best_step = json.loads(best_json.read_text())["step"]
        _assert_same_state(students[best_step], ckpt.load_student(best_pkl))
    assert (run.state.best_step, run.state.best_metric, run.state.evals_without_improvement) == (5, 0.7, 1)
    run.tracker.close()
    logged = read_scalars(tmp_path / "logs")["eval/metric"]
    assert [step for step, _ in logged] == [1, 2, 3, 4, 5, 6]
    assert [value for _, value in logged if not math.isnan(value)] == pytest.approx([0.1, 0.5, 0.3, 0.7, 0.6])


@pytest.mark.parametrize(("mode", "best_step"), [("max", 3), ("min", 2)])
def test_the_best_metric_mode_decides_which_way_is_better(tmp_path, mode, best_step) -> None:
    run = _setup(tmp_path, best_metric_mode=mode)
    metrics = [0.5, 0.2, 0.9, 0.4]
    _evaluate_each(run, metrics)
    assert (run.state.best_step, run.state.best_metric) == (best_step, metrics[best_step - 1])
    assert run.state.evals_without_improvement == 4 - best_step
    assert json.loads((run.output / "best.json").read_text()) == {
        "step": best_step, "metric": metrics[best_step - 1], "mode": mode, "file": "best.pkl",
    }  # fmt: skip


def test_a_callback_without_a_metric_changes_no_bookkeeping_and_writes_no_best(tmp_path) -> None:
    run = _setup(tmp_path, early_stopping_patience=1)
    assert _evaluate_each(run, [None, None]) == [False, False]
    assert (run.state.best_metric, run.state.best_step, run.state.evals_without_improvement) == (None, None, 0)
    assert not run.output.exists() or not list(run.output.iterdir())


# -- early stopping --------------------------------------------------------------------------------
def test_patience_counts_evaluations_without_improvement_and_stops(tmp_path) -> None:
    run = _setup(tmp_path, early_stopping_patience=2)
    # step 2 fails to improve, step 3 improves (the count restarts), steps 4 and 5 do not: stop at 5
    assert _evaluate_each(run, [0.5, 0.4, 0.6, 0.6, 0.1]) == [False, False, False, False, True]
    assert run.state.stopped_early and run.state.evals_without_improvement == 2
    assert (run.state.best_step, run.state.best_metric) == (3, 0.6)


def test_without_patience_the_run_never_stops_early(tmp_path) -> None:
    run = _setup(tmp_path)
    assert not any(_evaluate_each(run, [0.9, 0.1, 0.1, 0.1, 0.1]))
    assert not run.state.stopped_early and run.state.evals_without_improvement == 4


# -- the callback ----------------------------------------------------------------------------------
def _draws() -> tuple[float, float, float]:
    return random.random(), float(torch.rand(())), float(np.random.rand())


def test_the_callback_sees_the_student_in_eval_mode_and_leaves_every_rng_as_it_was(tmp_path) -> None:
    run = _setup(tmp_path)
    seen: dict[str, Any] = {}

    def callback(model: nn.Module, step: int) -> float:
        seen.update(model=model, training=[module.training for module in model.modules()], step=step)
        _draws()  # e.g. an evaluation that samples, or runs dropout
        model(torch.randn(8, 4))
        return 0.5

    random.seed(1), torch.manual_seed(1), np.random.seed(1)
    expected = _draws()
    random.seed(1), torch.manual_seed(1), np.random.seed(1)
    run.state.global_step = 7
    run.evaluator.evaluate(run.state, callback, run.tracker, checkpointed=False)
    assert _draws() == expected  # training continues with the streams it had
    assert seen["model"] is run.student and seen["step"] == 7
    assert not any(seen["training"])
    assert all(module.training for module in run.student.modules())  # back in train mode


def test_the_rng_is_restored_when_the_callback_raises(tmp_path) -> None:
    run = _setup(tmp_path)

    def failing(model: nn.Module, step: int) -> float:
        torch.rand(100)
        raise RuntimeError("evaluation failed")

    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        run.evaluator.evaluate(run.state, failing, run.tracker, checkpointed=False)
    assert torch.equal(torch.rand(3), expected)
    assert run.student.training


# -- the record beside a full state ----------------------------------------------------------------
def test_a_checkpointed_evaluation_is_recorded_beside_the_full_state_and_read_back_with_it(tmp_path) -> None:
    run = _setup(tmp_path, early_stopping_patience=1)
    optimizer = torch.optim.SGD(run.trainables.parameters(), lr=0.1)
    for step, metric in ((1, 0.8), (2, 0.3)):
        run.state.global_step = step
        run.state.pending_evaluation = True  # as the loop marks a checkpoint whose callback is due
        run.checkpointer.save(run.state, optimizer, None)
        saved = ckpt.load_state(ckpt.state_path(run.output, step))["run_state"]
        assert saved["pending_evaluation"]  # the callback has not run yet: a resume would run it
        callback = lambda model, step, metric=metric: metric  # noqa: E731
        stop = run.evaluator.evaluate(run.state, callback, run.tracker, checkpointed=True)
    assert stop
    record = json.loads(ckpt.evaluation_path(ckpt.state_path(run.output, 2)).read_text())
    assert record == {
        "best_metric": 0.8, "best_step": 1, "evals_without_improvement": 1, "stopped_early": True,
        "pending_evaluation": False,
    }  # fmt: skip
    assert {key: ckpt.load_state(ckpt.state_path(run.output, 2))["run_state"][key] for key in record} == record


def test_an_evaluation_between_checkpoints_writes_no_record(tmp_path) -> None:
    run = _setup(tmp_path)
    run.state.global_step = 3
    run.evaluator.evaluate(run.state, lambda model, step: 0.5, run.tracker, checkpointed=False)
    assert ckpt.list_evaluations(run.output) == [] and ckpt.list_states(run.output) == []
    assert (run.output / "best.json").is_file()  # best.pkl needs no checkpoint
