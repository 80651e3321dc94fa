"""A checkpoint written by an earlier distill version still resumes, and the run continues exactly.

``tests/fixtures/resume_v1/`` holds the files of step 4 of a 6-step run, written at commit 25755f7
(before the internal redesign of issue 21) by ``tests/fixtures/make_resume_fixture.py``, whose
docstring describes the run. Each test copies those files into a fresh ``output_dir``, resumes, and
compares with the same run trained here without interruption.

Weights are compared with a tight tolerance rather than bitwise: the fixture's first four steps ran
on another machine, whose CPU kernels may round differently in the last bit. Everything that is not
floating-point arithmetic (steps, data order, callbacks, RNG) must be identical.
"""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import pytest
import torch

from tests.fixtures import make_resume_fixture as fixture_run

SAVED = fixture_run.SAVED_STEP
FINAL = fixture_run.TOTAL_STEPS
TOLERANCE = {"rtol": 1e-5, "atol": 1e-7}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    result = fixture_run.run(output_dir)
    result.output_dir = output_dir
    return result


def _copy_fixture(tmp_path: Path) -> Path:
    output_dir = tmp_path / "run"
    shutil.copytree(fixture_run.FIXTURE, output_dir)
    return output_dir


def assert_close_state(expected: object, actual: object, where: str) -> None:
    """Nested state dicts: floating tensors within TOLERANCE, everything else equal."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        if expected.is_floating_point():
            torch.testing.assert_close(actual, expected, **TOLERANCE, msg=lambda text: f"{where}: {text}")
        else:
            assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert set(actual) == set(expected), where
        for key in expected:
            assert_close_state(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (left, right) in enumerate(zip(expected, actual)):
            assert_close_state(left, right, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=TOLERANCE["rtol"]), where
    else:
        assert actual == expected, where


def test_this_code_trains_the_fixture_run_as_the_version_that_wrote_it(uninterrupted) -> None:
    """The student file of the saved step equals this code's: if only the resume tests below fail,
    resuming is broken, not the training itself."""
    saved_student = torch.load(fixture_run.FIXTURE / f"gs{SAVED}.pkl", weights_only=True)
    this_student = torch.load(uninterrupted.output_dir / f"gs{SAVED}.pkl", weights_only=True)
    assert_close_state(saved_student, this_student, f"gs{SAVED}.pkl")
    assert uninterrupted.callback_steps == [2, 4, 6]
    assert uninterrupted.state.global_step == FINAL


@pytest.mark.parametrize("how", ["latest", "path"])
def test_resuming_the_fixture_continues_as_the_uninterrupted_run(uninterrupted, tmp_path: Path, how: str) -> None:
    output_dir = _copy_fixture(tmp_path)
    saved_file = output_dir / "checkpoints" / f"step-{SAVED:08d}.pt"
    resumed = fixture_run.run(output_dir, resume_from="latest" if how == "latest" else str(saved_file))

    # it started after the saved step, on the next batch of the same shuffled order: steps 5 and 6
    # are the last 3 batches (2 + the partial accumulation of 1) of the uninterrupted run
    assert len(uninterrupted.input_ids) == 10
    assert len(resumed.input_ids) == 3
    for index, (expected, actual) in enumerate(zip(uninterrupted.input_ids[-3:], resumed.input_ids)):
        assert torch.equal(actual, expected), f"batch {index} after the saved step is not the uninterrupted run's"
    # the evaluation of step 4 was recorded (step-4.eval.json), so only the step 6 callback runs
    assert resumed.callback_steps == [6]

    # the run state (steps, epoch, best metric and step, patience) ends as the uninterrupted run's;
    # epoch_start_rng holds the writing process's Python and CUDA RNG states, which are not the run's
    assert resumed.state.global_step == FINAL
    state, expected_state = resumed.state.state_dict(), uninterrupted.state.state_dict()
    del state["epoch_start_rng"], expected_state["epoch_start_rng"]
    assert expected_state["best_step"] == 2  # the fixture's record: step 4 did not improve on step 2
    assert_close_state(expected_state, state, "run state")

    assert_close_state(uninterrupted.student.state_dict(), resumed.student.state_dict(), "student")
    assert_close_state(uninterrupted.projections.state_dict(), resumed.projections.state_dict(), "projections")
    # the optimizer went on from the saved moments and step counts, the schedule from the saved LR
    expected_optimizer = uninterrupted.optimizer.state_dict()
    assert [group["lr"] for group in expected_optimizer["param_groups"]] == pytest.approx([4e-4, 1.2e-3])
    assert_close_state(expected_optimizer, resumed.optimizer.state_dict(), "optimizer")
    # the RNG went on from the saved state: the same draws (dropout, shuffling) were made
    assert torch.equal(resumed.rng, uninterrupted.rng)
    # and the resumed run wrote its final checkpoint where a new run would
    assert (output_dir / "checkpoints" / f"step-{FINAL:08d}.pt").is_file()
    assert_close_state(
        torch.load(uninterrupted.output_dir / f"gs{FINAL}.pkl", weights_only=True),
        torch.load(output_dir / f"gs{FINAL}.pkl", weights_only=True),
        f"gs{FINAL}.pkl",
    )
