"""Full-state checkpoints: exact resume (also after SIGKILL), fallback, refusal, best, failure policy.

The resume tests use the run in ``tests/_resume_worker.py``: tiny BERTs with dropout, a shuffled
DataLoader, gradient accumulation 2 with partial accumulations, a projection, an LR schedule and
clipping, 10 steps with a checkpoint every 2. Torch runs one thread here (tests/conftest.py) and in
the worker processes, so the numerics are the same in every process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel

from distill_core import CheckpointError, ComponentInfo, DistillError, NonFiniteLossError, TrainingConfig, hookimpl
from distill_core import checkpoint as ckpt
from tests import _resume_worker as worker

WORKER = Path(worker.__file__)
REPO = WORKER.parents[1]
FINAL = worker.TOTAL_STEPS
BLOCK_AT = 6  # the callback of the third checkpoint blocks: the full states of steps 2, 4 and 6 are on disk


def _worker_env() -> dict[str, str]:
    return {
        **os.environ,
        "DISTILL_PLUGIN_DISTRIBUTIONS": "distill",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> types.SimpleNamespace:
    """An uninterrupted run (in this process) and a run SIGKILLed while its 3rd checkpoint's callback runs."""
    root = tmp_path_factory.mktemp("resume")
    killed, marker = root / "killed", root / "marker"
    log = open(root / "killed.log", "wb")
    # start the doomed process first: it imports while the reference run trains here
    process = subprocess.Popen(
        [sys.executable, str(WORKER), str(killed), "--block-at", str(BLOCK_AT), "--marker", str(marker)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_worker_env(),
    )
    try:
        reference_state = worker.run(root / "reference")
        deadline = time.monotonic() + 300
        while not marker.exists():
            if process.poll() is not None:
                pytest.fail(
                    f"the worker exited ({process.returncode}) before blocking:\n" + (root / "killed.log").read_text()
                )
            if time.monotonic() > deadline:
                pytest.fail("the worker did not reach its third checkpoint in time")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        returncode = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    return types.SimpleNamespace(
        root=root,
        reference=root / "reference",
        reference_state=reference_state,
        killed=killed,
        killed_returncode=returncode,
    )


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def assert_identical(expected: Any, actual: Any, where: str = "") -> None:
    """Bitwise equality of nested checkpoint contents (tensors with torch.equal)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and expected.dtype == actual.dtype, where
        assert torch.equal(expected, actual), f"{where} differs"
    elif isinstance(expected, dict):
        assert set(expected) == set(actual), f"{where}: keys {sorted(map(str, expected))} vs {sorted(map(str, actual))}"
        for key in expected:
            assert_identical(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for index, (left, right) in enumerate(zip(expected, actual)):
            assert_identical(left, right, f"{where}[{index}]")
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


def assert_same_final_state(reference: Path, resumed: Path) -> None:
    expected = ckpt.load_state(ckpt.state_path(reference, FINAL))
    actual = ckpt.load_state(ckpt.state_path(resumed, FINAL))
    for key in ("student", "projections", "custom_projections", "optimizer", "scheduler", "run_state", "rng"):
        assert_identical(expected[key], actual[key], key)
    assert expected["optimizer"]["state"], "the optimizer state must not be empty"
    assert_identical(
        torch.load(ckpt.student_path(reference, FINAL), weights_only=True),
        torch.load(ckpt.student_path(resumed, FINAL), weights_only=True),
        f"gs{FINAL}.pkl",
    )
    assert json.loads((reference / "best.json").read_text()) == json.loads((resumed / "best.json").read_text())


# -- exact resume ------------------------------------------------------------------------------------
def test_sigkill_during_a_callback_then_resume_equals_uninterrupted_run(runs, tmp_path) -> None:
    """Killed while the callback of checkpoint 6 ran: the full state of step 6 was already on disk, so the
    resumed run starts from step 6 (evaluating it again), not from step 4, and ends bitwise equal."""
    assert runs.killed_returncode == -signal.SIGKILL
    assert [step for step, _ in ckpt.list_states(runs.killed)] == [2, 4, 6]  # mid-epoch 3 of 5 steps
    assert not list(runs.killed.rglob("*.tmp"))
    # the evaluations of steps 2 and 4 finished and were recorded; the one of step 6 did not
    assert ckpt.read_evaluation(ckpt.state_path(runs.killed, 4)) is not None
    assert ckpt.read_evaluation(ckpt.state_path(runs.killed, 6)) is None
    assert ckpt.load_state(ckpt.state_path(runs.killed, 6))["run_state"]["pending_evaluation"]
    resumed = _copy(runs.killed, tmp_path / "resumed")
    saved_step_6 = ckpt.state_path(resumed, 6).read_bytes()
    done = subprocess.run(
        [sys.executable, str(WORKER), str(resumed), "--resume"],
        capture_output=True,
        text=True,
        env=_worker_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"finished at step {FINAL}" in done.stdout
    assert "falling back" not in done.stderr
    # resumed from step 6: its evaluation ran again, and the next checkpoint written is step 8
    assert [line for line in done.stdout.splitlines() if line.startswith("callback")] == [
        f"callback at step {step}" for step in (6, 8, 10)
    ]
    assert ckpt.state_path(resumed, 6).read_bytes() == saved_step_6
    assert_same_final_state(runs.reference, resumed)


def test_truncated_latest_checkpoint_warns_and_falls_back_to_the_previous(runs, tmp_path) -> None:
    resumed = _copy(runs.killed, tmp_path / "resumed")
    latest = ckpt.state_path(resumed, 6)
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"step-00000006\.pt' is corrupt or truncated.*falling back"):
        state = worker.run(resumed, resume_from="latest")
    assert state.global_step == FINAL
    assert_same_final_state(runs.reference, resumed)


def test_resume_from_an_unreadable_path_is_an_error_not_a_fallback(runs, tmp_path) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ckpt.state_path(runs.reference, 4).read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        worker.run(tmp_path / "out", resume_from=str(broken))


def _flip_a_byte_in_tensor_data(path: Path) -> str:
    """Flip one bit in the middle of the largest tensor entry of a torch.save archive; return its name."""
    with zipfile.ZipFile(path) as archive:
        entry = max((e for e in archive.infolist() if "/data/" in e.filename), key=lambda e: e.file_size)
    data = bytearray(path.read_bytes())
    header = entry.header_offset  # the local header: 30 bytes, then the name and its own extra field
    name_length = int.from_bytes(data[header + 26 : header + 28], "little")
    extra_length = int.from_bytes(data[header + 28 : header + 30], "little")
    data[header + 30 + name_length + extra_length + entry.file_size // 2] ^= 0x40
    path.write_bytes(bytes(data))
    return entry.filename


def test_a_flipped_byte_in_the_latest_checkpoint_warns_naming_the_entry_and_falls_back(runs, tmp_path) -> None:
    resumed = _copy(runs.killed, tmp_path / "resumed")
    latest = ckpt.state_path(resumed, 6)
    entry = _flip_a_byte_in_tensor_data(latest)
    torch.load(latest, weights_only=True)  # torch.load itself does not notice: distill must
    with pytest.warns(UserWarning, match=rf"step-00000006\.pt' is corrupt: its entry '{entry}'.*falling back"):
        state = worker.run(resumed, resume_from="latest")
    assert state.global_step == FINAL
    assert_same_final_state(runs.reference, resumed)


def test_a_flipped_byte_is_an_error_naming_the_file_and_entry_for_states_and_student_files(runs, tmp_path) -> None:
    state_file = Path(shutil.copy(ckpt.state_path(runs.reference, 4), tmp_path / "step-00000004.pt"))
    student_file = Path(shutil.copy(ckpt.student_path(runs.reference, 4), tmp_path / "gs4.pkl"))
    intact = torch.load(student_file, weights_only=True)
    assert_identical(intact, ckpt.load_student(student_file), "gs4.pkl")
    for path, load in ((state_file, ckpt.load_state), (student_file, ckpt.load_student)):
        entry = _flip_a_byte_in_tensor_data(path)
        with pytest.raises(CheckpointError) as caught:
            load(path)
        message = str(caught.value)
        assert repr(str(path)) in message and f"its entry {entry!r}" in message, message
        assert "restore the file from a good copy, or use an earlier checkpoint" in message
    with pytest.raises(CheckpointError, match="is a full-state checkpoint, not a student file"):
        ckpt.load_student(ckpt.state_path(runs.reference, 4))


@pytest.mark.parametrize(
    ("saved_with", "resumed_with", "expected"),
    [
        (None, "step", "scheduler: checkpoint no scheduler, now StepLR"),
        ("step", None, "scheduler: checkpoint StepLR, now no scheduler"),
        ("lambda", "step", "scheduler: checkpoint LambdaLR, now StepLR"),
    ],
)
def test_resuming_with_another_scheduler_is_refused(tmp_path, saved_with, resumed_with, expected) -> None:
    """Without the check a new scheduler silently started from its first step, and a dropped one froze the LR."""
    schedulers = {
        None: None,
        "step": lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5),
        "lambda": lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
    }
    distiller, optimizer, loader = worker.build(tmp_path, ckpt_steps=1)
    distiller.train(optimizer, schedulers[saved_with], loader, num_steps=2, output_hidden_states=True)
    distiller, optimizer, loader = worker.build(tmp_path, ckpt_steps=1)
    before = {key: value.clone() for key, value in distiller.student.state_dict().items()}
    with pytest.raises(CheckpointError) as caught:
        distiller.train(
            optimizer, schedulers[resumed_with], loader, num_steps=2, output_hidden_states=True, resume_from="latest"
        )
    message = str(caught.value)
    assert "does not match this run" in message and expected in message, message
    assert "pass train() the same scheduler= or scheduler_class=" in message
    assert all(torch.equal(before[key], value) for key, value in distiller.student.state_dict().items())


def test_resuming_with_another_optimizer_class_is_refused(tmp_path) -> None:
    """AdamW's state resumed into SGD failed inside torch with KeyError: 'momentum'."""
    distiller, optimizer, loader = worker.build(tmp_path, ckpt_steps=1)
    distiller.train(optimizer, None, loader, num_steps=2, output_hidden_states=True)
    distiller, _, loader = worker.build(tmp_path, ckpt_steps=1)
    sgd = torch.optim.SGD(distiller.student.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError) as caught:
        distiller.train(sgd, None, loader, num_steps=2, output_hidden_states=True, resume_from="latest")
    message = str(caught.value)
    assert f"optimizer: checkpoint {type(optimizer).__qualname__}, now SGD (pass train() the same optimizer" in message


class _Interrupt(Exception):
    pass


def test_multi_task_run_resumes_exactly(tmp_path) -> None:
    from distill_core import DistillationConfig, MultiTaskDistillation

    def train(output_dir: Path, *, stop_at: int | None = None, resume_from: str | None = None) -> None:
        teachers, student, loaders = worker.two_task_run()
        config = TrainingConfig(
            output_dir=str(output_dir), device="cpu", progress_bar=False, ckpt_steps=2, gradient_accumulation_steps=2
        )
        distiller = MultiTaskDistillation(
            config,
            DistillationConfig(hard_label_weight=0.5),
            teachers,
            student,
            {t: worker.adaptor for t in teachers},
            {t: worker.adaptor for t in teachers},
        )

        def callback(model, step):
            if step == stop_at:
                raise _Interrupt

        torch.manual_seed(5)
        distiller.train(
            torch.optim.AdamW(student.parameters(), lr=1e-3),
            dataloaders=loaders,
            num_steps=8,
            callback=callback,
            resume_from=resume_from,
        )

    train(tmp_path / "reference")
    with pytest.raises(_Interrupt):
        train(tmp_path / "resumed", stop_at=6)
    train(tmp_path / "resumed", resume_from="latest")
    expected = ckpt.load_state(ckpt.state_path(tmp_path / "reference", 8))
    actual = ckpt.load_state(ckpt.state_path(tmp_path / "resumed", 8))
    for key in ("student", "optimizer", "run_state", "rng"):
        assert_identical(expected[key], actual[key], key)


def test_checkpoint_holds_the_full_state_and_loads_with_weights_only(runs) -> None:
    state = torch.load(ckpt.state_path(runs.reference, FINAL), weights_only=True)
    assert state["step"] == FINAL
    assert state["run_state"]["global_step"] == FINAL and state["run_state"]["epoch"] == 1
    assert state["run_state"]["epoch_start_rng"]["torch"].dtype == torch.uint8
    assert set(state["rng"]) >= {"python", "torch", "cuda"}
    assert json.loads(state["config"]["distillation"])["intermediate_matches"][0]["loss"] == "hidden_mse"
    assert json.loads(state["config"]["training"])["gradient_accumulation_steps"] == 2
    assert state["versions"]["distill"] and state["versions"]["plugins"]
    assert tuple(state["projections"]["0.weight"].shape) == (32, 16)
    assert state["scheduler"]["last_epoch"] == FINAL


def test_plugins_add_their_state_through_on_checkpoint(tmp_path, register_plugin) -> None:
    seen = []

    @hookimpl
    def on_checkpoint(checkpoint, step, path):
        seen.append((step, Path(path).name))
        checkpoint["plugins"]["test-counter"] = {"step": step, "tensor": torch.arange(3)}

    register_plugin(types.SimpleNamespace(on_checkpoint=on_checkpoint), "test-counter")
    distiller, optimizer, loader = worker.build(tmp_path, ckpt_steps=1)
    distiller.train(optimizer, None, loader, num_steps=2, output_hidden_states=True)
    assert seen == [(1, "step-00000001.pt"), (2, "step-00000002.pt")]
    saved = ckpt.load_state(ckpt.state_path(tmp_path, 2))
    assert saved["plugins"]["test-counter"]["step"] == 2
    assert torch.equal(saved["plugins"]["test-counter"]["tensor"], torch.arange(3))


# -- refusal -----------------------------------------------------------------------------------------
def test_checkpoint_from_another_config_is_refused_listing_the_differences(runs, tmp_path) -> None:
    other_match = {
        "layer_T": 2,
        "layer_S": 2,
        "feature": "hidden",
        "loss": "cos",
        "weight": 1,
        "proj": ["linear", 24, 32],
    }
    distiller, optimizer, loader = worker.build(
        tmp_path, student_hidden=24, match=other_match, gradient_accumulation_steps=1
    )
    before = {key: value.clone() for key, value in distiller.student.state_dict().items()}
    with pytest.raises(CheckpointError) as caught:
        distiller.train(
            optimizer,
            None,
            loader,
            num_epochs=2,
            output_hidden_states=True,
            resume_from=str(ckpt.state_path(runs.reference, 4)),
        )
    message = str(caught.value)
    assert "does not match this run" in message
    assert "distillation.intermediate_matches: checkpoint" in message and "'cos'" in message
    assert "training.gradient_accumulation_steps: checkpoint 2, now 1" in message
    assert "student.bert.embeddings.word_embeddings.weight: shape (100, 16) in the checkpoint, (100, 24) now" in message
    assert "projections.0.weight: shape (32, 16) in the checkpoint, (32, 24) now" in message
    assert all(torch.equal(before[key], value) for key, value in distiller.student.state_dict().items())


def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo should-never-run",))

    path = tmp_path / "step-00000001.pt"
    torch.save({"format": ckpt.FORMAT, "format_version": 1, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        ckpt.load_state(path)


# -- atomic writes and keep_last ---------------------------------------------------------------------
def test_atomic_write_leaves_no_temporary_file_and_a_failed_write_keeps_the_previous(tmp_path, monkeypatch) -> None:
    path = tmp_path / "gs1.pkl"
    ckpt.save_atomic({"w": torch.ones(3)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["gs1.pkl"]
    real_save = torch.save

    def crash_mid_write(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip archive")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_atomic({"w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["gs1.pkl"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))


def test_keep_last_leaves_exactly_n_checkpoints_of_each_kind(tmp_path) -> None:
    distiller, optimizer, loader = worker.build(tmp_path, ckpt_steps=1, keep_last=2)
    distiller.train(optimizer, None, loader, num_steps=5, output_hidden_states=True)
    assert [step for step, _ in ckpt.list_states(tmp_path)] == [4, 5]
    assert sorted(p.name for p in tmp_path.glob("gs*.pkl")) == ["gs4.pkl", "gs5.pkl"]
    assert not list(tmp_path.rglob("*.tmp"))


# -- best checkpoint and early stopping ----------------------------------------------------------------
@pytest.mark.parametrize(("mode", "best_step", "stop_step"), [("max", 2, 5), ("min", 1, 4)])
def test_best_checkpoint_and_early_stopping(tmp_path, mode, best_step, stop_step) -> None:
    metrics = [0.1, 0.5, 0.3, 0.4, 0.2, 0.9, 1.0, 1.1]
    distiller, optimizer, loader = worker.build(
        tmp_path, ckpt_steps=1, keep_last=1, best_metric_mode=mode, early_stopping_patience=3
    )
    calls = []

    def callback(model, step):
        calls.append(step)
        return metrics[step - 1]

    state = distiller.train(optimizer, None, loader, num_steps=8, callback=callback, output_hidden_states=True)
    assert calls == list(range(1, stop_step + 1))
    assert state.global_step == stop_step and state.stopped_early
    assert (state.best_step, state.best_metric, state.evals_without_improvement) == (
        best_step,
        metrics[best_step - 1],
        3,
    )
    info = json.loads((tmp_path / "best.json").read_text())
    assert info == {"step": best_step, "metric": metrics[best_step - 1], "mode": mode, "file": "best.pkl"}
    best = torch.load(tmp_path / "best.pkl", weights_only=True)
    assert_identical(torch.load(ckpt.student_path(tmp_path, best_step), weights_only=True), best, "best.pkl")
    # keep_last=1 keeps the newest and never deletes the best
    assert sorted(step for step, _ in ckpt.list_states(tmp_path)) == [best_step, stop_step]
    assert sorted(step for step, _ in ckpt.list_students(tmp_path)) == [best_step, stop_step]
    # the saved run state carries the bookkeeping: resuming an early-stopped run trains no further
    saved = ckpt.load_state(ckpt.state_path(tmp_path, stop_step))["run_state"]
    assert (saved["best_step"], saved["evals_without_improvement"], saved["stopped_early"]) == (best_step, 3, True)
    distiller, optimizer, loader = worker.build(
        tmp_path, ckpt_steps=1, keep_last=1, best_metric_mode=mode, early_stopping_patience=3
    )
    resumed = distiller.train(
        optimizer, None, loader, num_steps=8, callback=callback, output_hidden_states=True, resume_from="latest"
    )
    assert resumed.global_step == stop_step and calls == list(range(1, stop_step + 1))


def test_eval_steps_evaluates_between_checkpoints_without_writing_them(tmp_path) -> None:
    distiller, optimizer, loader = worker.build(tmp_path, ckpt_steps=4, eval_steps=3)
    calls = []

    def callback(model, step):
        assert not model.training
        calls.append(step)
        return float(step % 4)  # best at steps 3 and 7: 3.0; 6: 2.0; 8 (the end): 0.0

    state = distiller.train(optimizer, None, loader, num_steps=8, callback=callback, output_hidden_states=True)
    assert calls == [3, 6, 8]  # every eval_steps, and at the end
    assert [step for step, _ in ckpt.list_states(tmp_path)] == [4, 8]  # checkpoints keep their own cadence
    assert sorted(step for step, _ in ckpt.list_students(tmp_path)) == [4, 8]
    assert (state.best_step, state.best_metric) == (3, 3.0)
    assert json.loads((tmp_path / "best.json").read_text())["step"] == 3  # best.pkl needs no checkpoint
    saved = ckpt.load_state(ckpt.state_path(tmp_path, 4))["run_state"]
    assert (saved["best_step"], saved["evals_without_improvement"]) == (3, 0)  # the evaluation at 3 is saved


def test_early_stopping_between_checkpoints_saves_where_it_stopped(tmp_path) -> None:
    distiller, optimizer, loader = worker.build(tmp_path, ckpt_steps=10, eval_steps=1, early_stopping_patience=2)
    metrics = iter([0.5, 0.4, 0.3])
    state = distiller.train(
        optimizer, None, loader, num_steps=8, callback=lambda model, step: next(metrics), output_hidden_states=True
    )
    assert state.stopped_early and state.global_step == 3
    assert [step for step, _ in ckpt.list_states(tmp_path)] == [3]
    assert ckpt.load_state(ckpt.state_path(tmp_path, 3))["run_state"]["stopped_early"]


def test_eval_steps_without_a_callback_warns(tmp_path) -> None:
    distiller, optimizer, loader = worker.build(tmp_path, eval_steps=2)
    with pytest.warns(UserWarning, match=r"eval_steps is set but train\(\) got no callback"):
        distiller.train(optimizer, None, loader, num_steps=2, output_hidden_states=True)


def test_early_stopping_without_a_callback_is_refused_at_setup(tmp_path) -> None:
    distiller, optimizer, loader = worker.build(tmp_path, early_stopping_patience=2)
    with pytest.raises(DistillError, match="early_stopping_patience is set but train\\(\\) got no callback"):
        distiller.train(optimizer, None, loader, num_steps=2, output_hidden_states=True)
    assert not list(tmp_path.glob("gs*.pkl"))


# -- failure policy ----------------------------------------------------------------------------------
class _NanParams(BaseModel):
    at_call: int


def _nan_plugin() -> types.SimpleNamespace:
    """Match loss ``test_nan``: mean squared error, but NaN on its ``at_call``-th call."""
    calls = [0]

    @hookimpl
    def declare_components():
        return [ComponentInfo(kind="match_loss", name="test_nan", params=_NanParams, summary="MSE, NaN once")]

    @hookimpl
    def compute_match_loss(name, feature_S, feature_T, mask, params):
        if name != "test_nan":
            return None
        calls[0] += 1
        loss = (feature_S - feature_T).pow(2).mean()
        return loss * float("nan") if calls[0] == params.at_call else loss

    return types.SimpleNamespace(declare_components=declare_components, compute_match_loss=compute_match_loss)


NAN_MATCH = {
    "layer_T": 3,
    "layer_S": 2,
    "feature": "hidden",
    "loss": "test_nan",
    "weight": 1,
    "params": {"at_call": 5},
    "proj": ["linear", 16, 32],
}


def test_a_non_finite_term_raises_naming_the_term_and_the_step(tmp_path, register_plugin) -> None:
    register_plugin(_nan_plugin(), "test-nan")
    distiller, optimizer, loader = worker.build(tmp_path, match=NAN_MATCH, ckpt_steps=1)
    with pytest.raises(NonFiniteLossError) as caught:
        distiller.train(optimizer, None, loader, num_steps=4, output_hidden_states=True)
    message = str(caught.value)
    # call 5 is the first micro-batch of step 3 (two micro-batches per step)
    assert "loss term 'match0_test_nan' was NaN or infinite at optimisation step 3" in message
    assert "'kd'" not in message and "nonfinite_policy='skip'" in message
    assert [step for step, _ in ckpt.list_states(tmp_path)] == [1, 2]  # nothing non-finite was saved


def test_skip_policy_skips_the_update_and_counts_it(tmp_path, register_plugin) -> None:
    register_plugin(_nan_plugin(), "test-nan")
    distiller, optimizer, loader = worker.build(tmp_path, match=NAN_MATCH, ckpt_steps=1, nonfinite_policy="skip")
    state = distiller.train(optimizer, None, loader, num_steps=4, output_hidden_states=True)
    assert state.global_step == 4 and state.skipped_steps == 1
    students = {step: torch.load(path, weights_only=True) for step, path in ckpt.list_students(tmp_path)}
    assert_identical(students[2], students[3], "the skipped step 3")  # no update at step 3
    assert any(not torch.equal(students[3][key], value) for key, value in students[4].items())
    full = {step: ckpt.load_state(ckpt.state_path(tmp_path, step)) for step in (2, 3)}
    assert_identical(full[2]["optimizer"]["state"], full[3]["optimizer"]["state"], "optimizer state")
    assert all(torch.isfinite(value).all() for value in students[4].values() if value.is_floating_point())
    assert ckpt.load_state(ckpt.state_path(tmp_path, 4))["run_state"]["skipped_steps"] == 1


@pytest.mark.parametrize("field", ["output_dir", "log_dir"])
def test_unwritable_folder_fails_at_setup_before_any_training(tmp_path, field) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    folders = {"output_dir": str(tmp_path / "out"), "log_dir": str(tmp_path / "logs"), field: str(blocker / "sub")}
    distiller, optimizer, loader = worker.build(folders["output_dir"], log_dir=folders["log_dir"])
    error = worker.refused_training(distiller, optimizer, loader)
    assert isinstance(error, DistillError)
    assert re.search(rf"TrainingConfig\.{field}=.*is not writable", str(error))


def test_new_training_fields_are_validated() -> None:
    config = TrainingConfig(keep_last=3, best_metric_mode="min", early_stopping_patience=2, nonfinite_policy="skip")
    assert TrainingConfig.from_dict(config.to_dict()) == config
    for bad in (
        {"keep_last": 0},
        {"early_stopping_patience": 0},
        {"best_metric_mode": "up"},
        {"nonfinite_policy": "ignore"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainingConfig(**bad)


def test_the_non_finite_check_reads_nothing_while_logged_means_are_finite_and_names_the_first_bad_step() -> None:
    from distill_core.loop import NonFiniteGuard, RunState

    guard = NonFiniteGuard(["kd", "match0_hidden_mse"], "raise")
    state = RunState(global_step=4)
    finite = torch.tensor(1.0)
    rows = [finite, torch.tensor(float("inf")), torch.tensor(float("nan")), finite]
    stacked = torch.stack([torch.stack([finite, finite, term]) for term in rows])  # steps 1-4 x [total, kd, match]
    guard.check(stacked, [1, 2, 3, 4], state, means=[1.0, 1.0, 1.0])  # the tracker's means say: nothing to look up
    with pytest.raises(
        NonFiniteLossError,
        match=r"'match0_hidden_mse' was NaN or infinite at optimisation step 2 \(found at step 4",
    ):
        guard.check(stacked, [1, 2, 3, 4], state, means=[1.0, 1.0, float("nan")])
    with pytest.raises(NonFiniteLossError, match="step 2"):
        guard.check(stacked, [1, 2, 3, 4], state)  # at a checkpoint the guard reads the interval itself
    guard.check(stacked[[0, 3]], [1, 4], state)  # finite steps only: nothing to raise

    class OneProcess:
        def any_rank(self, flag):
            return bool(flag)

    skip = NonFiniteGuard(["kd"], "skip")
    assert skip.skip(torch.stack([finite, torch.tensor(float("nan"))]), OneProcess()) is True
    assert skip.skip(torch.stack([finite, finite]), OneProcess()) is False
