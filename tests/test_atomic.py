"""Atomic writes (`distill_core.atomic`): one implementation behind the text and torch.save writers."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from distill_core import atomic
from distill_core import checkpoint as ckpt
from distill_core import config as config_module
from distill_core.config import TrainingConfig


def _writers():
    """(name, write(path, version), read(path) -> version) for both public writers, as callers import them."""
    return [
        ("write_text_atomic", lambda path, version: config_module.write_text_atomic(path, json.dumps(version)),
         lambda path: json.loads(path.read_text(encoding="utf-8"))),
        ("save_atomic", lambda path, version: ckpt.save_atomic({"version": torch.tensor(version)}, path),
         lambda path: int(torch.load(path, weights_only=True)["version"])),
    ]


@pytest.mark.parametrize(("name", "write", "read"), _writers(), ids=[w[0] for w in _writers()])
def test_an_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch, name, write, read) -> None:
    path = tmp_path / "file"
    write(path, 1)
    real_fsync = os.fsync

    def interrupted(fd: int) -> None:  # the data is written, the process is stopped before it is durable
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write(path, 2)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert read(path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # no temporary file left behind
    write(path, 3)
    assert read(path) == 3


@pytest.mark.parametrize(("name", "write", "read"), _writers(), ids=[w[0] for w in _writers()])
def test_both_writers_make_file_and_rename_durable(tmp_path, monkeypatch, name, write, read) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def record(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    write(tmp_path / "sub" / "file", 7)  # the folder is created too
    assert synced == ["file", "folder"]
    assert read(tmp_path / "sub" / "file") == 7


def test_one_implementation_and_the_old_import_paths_still_work() -> None:
    assert ckpt.save_atomic is atomic.save_atomic
    assert ckpt.write_text_atomic is config_module.write_text_atomic is atomic.write_text_atomic
    # checkpoint files no longer depend on the config module for writing
    assert "distill_core.config" not in {
        getattr(value, "__module__", None) for value in vars(ckpt).values() if callable(value)
    }


def test_config_to_json_file_is_atomic(tmp_path, monkeypatch) -> None:
    path = tmp_path / "training.json"
    TrainingConfig(output_dir="a").to_json_file(path)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        TrainingConfig(output_dir="b").to_json_file(path)
    assert TrainingConfig.from_json_file(path).output_dir == "a"
