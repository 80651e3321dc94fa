"""The `distill` command as a user's shell runs it: --version, and config files it cannot read."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from importlib import metadata

import pytest

from tests.conftest import BUILTINS_ONLY, REPO, run_cli


def test_version_prints_distill_and_torch_versions() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert re.fullmatch(r"distill \S+ \(torch \S+, Python \d+\.\d+\.\d+\)", line), line
    assert line.startswith(f"distill {metadata.version('distill')} ")
    assert f"torch {metadata.version('torch')}" in line
    assert "--version" in run_cli("--help").stdout


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"temperature": 2, "note": "caf\xe9"}', "not UTF-8 text (byte 0xe9 at offset 31); save it as UTF-8 JSON"),
        (b"\xff\xfe{\x00}\x00", "not UTF-8 text (byte 0xff at offset 0)"),  # UTF-16, as some editors save
        (b'{"temperature": 2,}', "not valid JSON ("),
        (b"", "not valid JSON (Expecting value at line 1, column 1)"),
        (b"[1, 2]", "must hold a JSON object, got list"),
    ],
    ids=["latin-1", "utf-16", "trailing-comma", "empty", "not-an-object"],
)
def test_validate_names_the_file_and_the_problem_in_one_line(tmp_path, content, reason) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}: ")
    assert reason in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_validate_a_missing_file_or_a_folder(tmp_path) -> None:
    result = run_cli("validate", str(tmp_path / "nope.json"))
    assert (result.returncode, result.stderr.strip()) == (2, f"error: {tmp_path / 'nope.json'}: no such file")
    result = run_cli("validate", str(tmp_path))
    assert (result.returncode, result.stderr.strip()) == (2, f"error: {tmp_path}: is a folder, not a JSON file")


def test_validate_accepts_a_utf8_byte_order_mark(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b'\xef\xbb\xbf{"temperature": 2}')
    result = run_cli("validate", str(path))
    assert result.returncode == 0, result.stderr


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "distill_core", *args]


_ENV = {**os.environ, **BUILTINS_ONLY, "OMP_NUM_THREADS": "1"}


def test_distill_schema_piped_into_head_ends_quietly() -> None:
    """`distill schema | head -1` printed a BrokenPipeError traceback once head had its line."""
    shell = f"{shlex.join(_command('schema'))} | head -1"
    result = subprocess.run(shell, shell=True, capture_output=True, text=True, env=_ENV, cwd=REPO, timeout=120)
    assert result.stdout == "{\n"
    assert result.stderr == ""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    from tests.test_teacher_cache import lm_run

    root = tmp_path_factory.mktemp("cache")
    lm_run(root / "out", {"location": str(root / "cache")})
    return str(root / "cache")


@pytest.mark.parametrize("args", [["schema"], ["plugins"], ["plugins", "--json"], ["cache", "info"]])
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(args: list[str], request) -> None:
    if args[0] == "cache":
        args = [*args, request.getfixturevalue("cache_dir")]
    process = subprocess.Popen(_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_ENV, cwd=REPO)
    process.stdout.close()  # before the command writes anything: every write meets a closed pipe
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141  # 128 + SIGPIPE, as a shell reports a tool SIGPIPE ended
    assert stderr == ""
