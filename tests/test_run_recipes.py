"""Shipped recipes (distill train recipe:NAME) and the package:/cache: names a run file may use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill_core.run import RunFileError, prepare_run
from distill_core.run import sources
from distill_core.run.files import Problem, read_run_file

REPO = Path(__file__).resolve().parents[1]


def test_list_recipes_lists_the_shipped_recipes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "distill_core", "train", "--list-recipes"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "recipe:smollm2-bbc" in done.stdout and "20-layer" in done.stdout
    assert "recipe:minilm-rt" in done.stdout and "Rotten Tomatoes" in done.stdout


def test_a_recipe_reads_as_a_run_file_and_an_unknown_one_gets_a_did_you_mean() -> None:
    assert read_run_file("recipe:smollm2-bbc")["teacher"]["path"] == "cache:smollm2-135m-instruct"
    with pytest.raises(RunFileError, match="no recipe 'smollm2-bcc'; did you mean 'smollm2-bbc'"):
        read_run_file("recipe:smollm2-bcc")


def test_package_names_a_path_inside_an_installed_package_and_a_missing_one_is_a_problem() -> None:
    problems: list[Problem] = []
    found = sources.resolve("package:pytest/__init__.py", "teacher.path", problems)
    assert Path(found).is_file() and not problems
    sources.resolve("package:no_such_package_xyz/model", "student.path", problems)
    assert (
        str(problems[0])
        == "student.path: package:no_such_package_xyz/model: the package 'no_such_package_xyz' is not installed"
    )


def test_a_cached_asset_is_made_once_and_an_unknown_name_is_a_problem(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path))
    made: list[Path] = []

    def make(target: Path) -> None:
        made.append(target)
        target.write_text("hello\n")

    monkeypatch.setitem(sources.CACHED, "greeting.txt", make)
    problems: list[Problem] = []
    first = sources.resolve("cache:greeting.txt", "data.train_file", problems)
    second = sources.resolve("cache:greeting.txt", "data.train_file", problems)
    assert first == second and Path(first).read_text() == "hello\n" and len(made) == 1 and not problems
    assert Path(first).parent == tmp_path / "run-assets" / f"v{sources.CACHE_VERSION}"
    sources.resolve("cache:bbc_news/trian.jsonl", "data.train_file", problems)
    assert "did you mean 'bbc_news/train.jsonl'?" in str(problems[0])


def test_a_run_file_reports_an_unknown_cached_asset_at_its_field(tmp_path) -> None:
    run = tmp_path / "run.yaml"
    run.write_text(
        "teacher: {path: 'cache:smollm3'}\nstudent: {path: 'package:no_such_package_xyz/m'}\n"
        "data: {train_file: x.jsonl}\n"
    )
    with pytest.raises(RunFileError) as caught:
        prepare_run(run)
    message = str(caught.value)
    assert "teacher.path: cache:smollm3: no such asset" in message and "student.path: package:" in message


@pytest.mark.e2e
def test_the_smollm2_recipe_validates_with_the_packaged_model_and_data(capsys) -> None:
    from distill_core.demo.assets import BBC_NEWS, SMOLLM2, MissingDependencyError
    from distill_core.run import train_from_file

    try:
        SMOLLM2.path(), BBC_NEWS.path()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))

    lines: list[str] = []
    result = train_from_file("recipe:smollm2-bbc", dry_run=True, say=lines.append)
    assert result.student is None and result.checked.teacher_config["num_hidden_layers"] == 30
    assert result.checked.student_config["num_hidden_layers"] == 20
    text = "\n".join(lines)
    assert "steps: 80" in text and "20 layers by block_influence" in text
    assert "training examples (text, packed, max_length 128)" in text


@pytest.mark.e2e
def test_the_minilm_recipe_validates_with_the_packaged_model_and_data() -> None:
    """The first run fine-tunes the MiniLM teacher into the cache (minutes); later runs read it."""
    from distill_core.demo.assets import ROTTEN_TOMATOES, TEACHER_MODEL, MissingDependencyError
    from distill_core.run import train_from_file

    try:
        TEACHER_MODEL.path(), ROTTEN_TOMATOES.path()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    lines: list[str] = []
    result = train_from_file("recipe:minilm-rt", dry_run=True, say=lines.append)
    assert result.checked.task == "sequence_classification"
    assert result.checked.label_names == ["rotten", "fresh"]  # the teacher's own id2label order
    assert result.checked.student_config["num_hidden_layers"] == 2
    assert "held out: 2000 examples" in "\n".join(lines)
