"""The `distill` command as a user's shell runs it: --version, and config files it cannot read."""

from __future__ import annotations

import re
from importlib import metadata

import pytest

from tests.conftest import run_cli


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
