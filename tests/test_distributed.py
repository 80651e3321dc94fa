"""Real ``torchrun --nproc_per_node 2`` runs (gloo, CPU): DDP, FSDP2, rank-0 effects, kill and resume.

The runs are in ``tests/_distributed_worker.py``. Two processes with batch 4 see, step by step, the
same examples as one process with batch 8 (no shuffling, DistributedSampler added by distill), so the
distributed students must equal the single-process one to float tolerance.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from distill_core import CheckpointError
from distill_core import checkpoint as ckpt
from tests import _distributed_worker as worker
from tests.tb_reader import read_scalars

WORKER = Path(worker.__file__)
REPO = WORKER.parents[1]
FINAL = worker.TOTAL_STEPS
TOLERANCE = 5e-5  # float32 sums in another order (two half batches, gradients all-reduced)

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "DISTILL_PLUGIN_DISTRIBUTIONS": "distill",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def _log_dir(output_dir: Path) -> Path:
    """Where torchrun writes each rank's stderr (beside the run's output, not in it)."""
    return output_dir.with_name(output_dir.name + "-logs")


def _torchrun_command(output_dir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--log-dir",
        str(_log_dir(output_dir)),
        "--redirects",
        "2",  # each rank's stderr to its own file, so a failure shows every rank's traceback
        str(WORKER),
        str(output_dir),
        *args,
    ]


def rank_errors(output_dir: Path) -> str:
    """The end of each rank's stderr, for a failure message."""
    logs = sorted(_log_dir(output_dir).glob("**/stderr.log"))
    return "\n".join(f"--- {log.relative_to(_log_dir(output_dir))}:\n{log.read_text()[-4000:]}" for log in logs)


def torchrun(output_dir: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(_torchrun_command(output_dir, *args), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + "\n" + rank_errors(output_dir)
    return done


def student_at(output_dir: Path, step: int = FINAL) -> dict[str, torch.Tensor]:
    return torch.load(ckpt.student_path(output_dir, step), weights_only=True)


def assert_close(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], tolerance: float) -> None:
    assert set(expected) == set(actual)
    gap = max((expected[key].float() - actual[key].float()).abs().max().item() for key in expected)
    assert gap <= tolerance, f"largest weight difference {gap:.3g} > {tolerance}"
    moved = max((expected[key].float() - worker_initial()[key].float()).abs().max().item() for key in expected)
    assert moved > 100 * tolerance, "the student must have trained for the comparison to mean anything"


def worker_initial() -> dict[str, torch.Tensor]:
    return worker.bert_models()[1].state_dict()


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> types.SimpleNamespace:
    """The uninterrupted two-process DDP run of the bert workload, and its one-process reference."""
    root = tmp_path_factory.mktemp("distributed")
    done = torchrun(root / "ddp", "--workload", "bert")
    torch.manual_seed(0)
    worker.run(root / "single", "bert", batch_size=8)
    return types.SimpleNamespace(root=root, out=root / "ddp", single=root / "single", stdout=done.stdout)


def test_ddp_student_equals_a_single_process_run_with_the_combined_batch(ddp) -> None:
    assert "rank 0: finished at step 8" in ddp.stdout and "rank 1: finished at step 8" in ddp.stdout
    expected = student_at(ddp.single)
    assert_close(expected, student_at(ddp.out), TOLERANCE)
    # logged values are averaged across ranks: the same losses as the one-process run
    logged, reference = read_scalars(ddp.out / "logs"), read_scalars(ddp.single / "logs")
    assert [step for step, _ in logged["loss/total"]] == [2, 4, 6, 8]
    for (_, value), (_, expected_value) in zip(logged["loss/total"], reference["loss/total"]):
        assert value == pytest.approx(expected_value, rel=1e-4)


def test_a_scheduler_built_from_len_of_the_users_own_loader_ends_as_in_one_process(ddp) -> None:
    """The README's ``lambda opt: get_linear_schedule_with_warmup(opt, 0, len(loader) * epochs)``, the
    same script under torchrun: ``len(loader)`` counts this rank's share, so the linear decay ends at 0
    at the last step, as in one process (it ended half-way when it counted the whole dataset)."""
    logged, reference = read_scalars(ddp.out / "logs"), read_scalars(ddp.single / "logs")
    for tag in ("lr/group0", "lr/group1"):  # the student's group and the projection's
        assert [step for step, _ in logged[tag]] == [step for step, _ in reference[tag]] == [2, 4, 6, 8]
        assert [value for _, value in logged[tag]] == pytest.approx([value for _, value in reference[tag]])
        assert reference[tag][-1][1] == 0.0
    for rank in (0, 1):
        assert f"rank {rank}: final lr 0 0" in ddp.stdout


def test_the_process_group_distill_made_is_destroyed_at_exit(ddp) -> None:
    """Left to the interpreter's teardown, gloo's threads once aborted a finished rank (SIGABRT)."""
    for rank in (0, 1):
        assert f"rank {rank}: process group destroyed at exit" in ddp.stdout


def test_rank_zero_alone_writes_checkpoints_logs_and_runs_the_callback(ddp) -> None:
    assert sorted(p.name for p in ddp.out.glob("gs*.pkl")) == [f"gs{step}.pkl" for step in (2, 4, 6, 8)]
    assert [step for step, _ in ckpt.list_states(ddp.out)] == [2, 4, 6, 8]
    assert len(list((ddp.out / "logs").glob("events.out.tfevents.*"))) == 1
    assert not list(ddp.out.rglob("*.tmp"))
    assert "rank 1: callback" not in ddp.stdout
    assert [line for line in ddp.stdout.splitlines() if "callback" in line] == [
        f"rank 0: callback at step {step}" for step in (2, 4, 6, 8)
    ]
    saved = ckpt.load_state(ckpt.state_path(ddp.out, FINAL))
    assert saved["world_size"] == 2 and len(saved["ranks"]["rng"]) == 2
    assert saved["run_state"]["best_step"] == FINAL  # the callback's metric is the step: the best is the last


@pytest.mark.parametrize("sharding", ["ddp", "fsdp-student"])
def test_chunked_token_kd_averages_over_the_steps_tokens_on_all_ranks(tmp_path, sharding) -> None:
    """GPT-2 token KD (chunked: hidden states x head, the default for causal LMs), padding that differs
    per example, accumulation 2: each rank's micro-batches hold different numbers of valid tokens, and
    the step still equals one process over the same examples, with the student in DDP or sharded."""
    fsdp = ["--fsdp", "student"] if sharding == "fsdp-student" else []
    torchrun(tmp_path / "ddp", "--workload", "gpt2", "--batch-size", "2", "--accumulation", "2", *fsdp)
    torch.manual_seed(0)
    worker.run(tmp_path / "single", "gpt2", batch_size=4, gradient_accumulation_steps=2)
    expected, actual = student_at(tmp_path / "single"), student_at(tmp_path / "ddp")
    gap = max((expected[key] - actual[key]).abs().max().item() for key in expected)
    assert gap <= TOLERANCE
    initial = worker.gpt2_models()[1].state_dict()
    assert max((expected[key] - initial[key]).abs().max().item() for key in expected) > 100 * TOLERANCE


@pytest.mark.parametrize("sharded", ["student", "teachers"])
def test_fsdp2_sharded_model_ends_equal_to_the_ddp_run(ddp, tmp_path, sharded) -> None:
    torchrun(tmp_path / "fsdp", "--workload", "bert", "--fsdp", sharded)
    assert_close(student_at(ddp.out), student_at(tmp_path / "fsdp"), TOLERANCE)
    saved = ckpt.load_state(ckpt.state_path(tmp_path / "fsdp", FINAL))
    assert saved["optimizer_layout"] == ("fsdp-full" if sharded == "student" else "torch")
    assert all(isinstance(value, torch.Tensor) for value in saved["student"].values())  # full tensors, no DTensor


def _process_tree(root: int) -> list[int]:
    """``root`` and every process below it (read from /proc: torchrun starts its workers in new sessions,
    so killing the launcher's process group alone would leave them running)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the parenthesised command name
        children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the launcher and all its workers at once, as a node failure would."""
    for pid in _process_tree(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=60)


def test_sigkill_of_the_group_after_its_second_checkpoint_then_resume_equals_the_uninterrupted_run(
    ddp, tmp_path
) -> None:
    out, marker = tmp_path / "killed", tmp_path / "marker"
    log = open(tmp_path / "killed.log", "wb")
    process = subprocess.Popen(
        _torchrun_command(out, "--workload", "bert", "--block-at", "4", "--marker", str(marker)),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            if process.poll() is not None:
                log_text = (tmp_path / "killed.log").read_text()[-3000:]
                pytest.fail(f"the group exited before blocking:\n{log_text}\n{rank_errors(out)}")
            if time.monotonic() > deadline:
                pytest.fail("the group did not reach its second checkpoint in time")
            time.sleep(0.05)
        survivors = _process_tree(process.pid)
        _kill_tree(process)
    finally:
        if process.poll() is None:
            _kill_tree(process)
        log.close()
    assert len(survivors) >= 3  # the launcher and both ranks were running, and were killed
    time.sleep(0.5)
    alive = [pid for pid in survivors if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
    assert not alive, f"processes {alive} outlived the SIGKILL"
    assert [step for step, _ in ckpt.list_states(out)] == [2, 4]
    assert ckpt.read_evaluation(ckpt.state_path(out, 4)) is None  # killed during the callback of step 4
    done = torchrun(out, "--workload", "bert", "--resume")
    assert "rank 0: finished at step 8" in done.stdout
    callbacks = [line for line in done.stdout.splitlines() if "callback" in line]
    assert callbacks == [f"rank 0: callback at step {step}" for step in (4, 6, 8)]  # step 4 evaluated again
    expected, actual = (ckpt.load_state(ckpt.state_path(path, FINAL)) for path in (ddp.out, out))
    for key in ("student", "projections", "optimizer", "run_state", "ranks"):
        _assert_identical(expected[key], actual[key], key)


def test_teacher_cache_under_ddp_each_rank_caches_its_own_examples_once_and_changes_nothing(tmp_path) -> None:
    """A reshuffling DistributedSampler: in epoch 1 each rank stores the 16 examples it sees, in its own
    files; in epoch 2 it reads the others' examples from the other rank's files (no miss), and the
    student equals the uncached run's."""
    from distill_core.teacher_cache.store import read_records

    cache = tmp_path / "cache"
    done = torchrun(tmp_path / "cached", "--workload", "bert", "--shuffle", "--teacher-cache", str(cache))
    torchrun(tmp_path / "plain", "--workload", "bert", "--shuffle")
    for rank in (0, 1):
        half = worker.EXAMPLES // 2
        assert f"rank {rank}: teacher cache hits={half} misses={half} stored={half}" in done.stdout
    indexes = [cache / "teacher-0" / f"rank-0000{rank}.index" for rank in (0, 1)]
    keys = [{record.key for record in read_records(index)[0]} for index in indexes]
    assert not keys[0] & keys[1] and keys[0] | keys[1] == set(range(worker.EXAMPLES))
    assert_close(student_at(tmp_path / "plain"), student_at(tmp_path / "cached"), TOLERANCE)
    logged = read_scalars(tmp_path / "cached" / "logs")  # the entries of both ranks' files
    assert logged["teacher_cache/entries"] == [(2, 16.0), (4, 32.0), (6, 32.0), (8, 32.0)]
    assert logged["teacher_cache/hit_rate"] == [(2, 0.0), (4, 0.0), (6, 1.0), (8, 1.0)]


def test_teacher_cache_entries_are_logged_as_the_total_of_all_ranks(tmp_path) -> None:
    """A memory cache is per process: each rank holds the 16 examples its sampler gives it, and the
    logged count is both ranks' (it was rank 0's alone: 8, 16, 16, 16)."""
    torchrun(tmp_path / "memory", "--workload", "bert", "--teacher-cache", "memory")
    logged = read_scalars(tmp_path / "memory" / "logs")
    assert logged["teacher_cache/entries"] == [(2, 16.0), (4, 32.0), (6, 32.0), (8, 32.0)]
    assert logged["teacher_cache/hit_rate"] == [(2, 0.0), (4, 0.0), (6, 1.0), (8, 1.0)]


def test_every_distiller_runs_under_ddp_with_the_same_weights_on_every_rank(tmp_path) -> None:
    out = tmp_path / "every"
    out.mkdir()
    done = torchrun(out, "--every-distiller")
    assert "rank 0: every distiller finished" in done.stdout and "rank 1: every distiller finished" in done.stdout
    ranks = [torch.load(out / f"weights-rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    torch.manual_seed(0)
    single = worker.run_every_distiller(tmp_path / "single", batch_size=8)
    for name in ("basic", "multi_teacher", "multi_task"):
        for key in ranks[0][name]:
            assert torch.equal(ranks[0][name][key], ranks[1][name][key]), f"{name}: ranks differ at {key}"
        # checkpoints come from rank 0 alone
        assert sorted(p.name for p in (out / name).glob("gs*.pkl")) == [
            f"gs{worker.STEPS_PER_EPOCH if name != 'multi_task' else 4}.pkl"
        ]
    for name in ("basic", "multi_teacher"):  # same examples per step as one process with the combined batch
        gap = max((single[name][k].float() - ranks[0][name][k].float()).abs().max().item() for k in single[name])
        assert gap <= TOLERANCE, f"{name}: {gap}"


def test_a_new_run_over_another_runs_checkpoints_is_refused_on_every_rank(tmp_path) -> None:
    """Rank 0 looks at output_dir and every rank raises: none is left waiting for it in a collective."""
    out = tmp_path / "used"
    (out / ckpt.STATE_DIR).mkdir(parents=True)
    for path in (ckpt.student_path(out, 2), ckpt.state_path(out, 2)):
        path.write_bytes(b"a previous run's file")
    done = subprocess.run(
        _torchrun_command(out, "--workload", "bert"), capture_output=True, text=True, env=_env(), timeout=300
    )
    assert done.returncode != 0
    logs = sorted(_log_dir(out).glob("**/stderr.log"))
    assert len(logs) == 2, rank_errors(out)
    for log in logs:
        assert "holds the checkpoints of a previous run" in log.read_text(), rank_errors(out)
    assert sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file()) == [
        "checkpoints/step-00000002.pt",
        "gs2.pkl",
    ]


def test_resuming_with_another_world_size_is_refused_naming_both_sizes(ddp, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(ddp.out, copy)
    with pytest.raises(CheckpointError, match=r"world size 2, but this run has world size 1"):
        worker.run(copy, "bert", batch_size=8, resume=True)


def _assert_identical(expected, actual, where: str) -> None:
    if isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual), f"{where} differs"
    elif isinstance(expected, dict):
        assert set(expected) == set(actual), where
        for key in expected:
            _assert_identical(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for index, (left, right) in enumerate(zip(expected, actual)):
            _assert_identical(left, right, f"{where}[{index}]")
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"
