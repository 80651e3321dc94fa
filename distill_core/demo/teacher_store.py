"""Where the demo (and the examples) keep fine-tuned teacher *models* between runs, and under which key.

Not to be confused with the teacher-output cache (:mod:`distill_core.teacher_cache`, DESIGN §10),
which stores a teacher's outputs for training; this module stores whole fine-tuned models.

The cache folder is ``$DISTILL_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/distill``, else
``~/.cache/distill``. A teacher is stored under ``teachers/<key>/`` with ``save_pretrained`` files
and an ``info.json``; the key names everything that changes the teacher (data set, train size,
sequence length, seed, steps, learning rate, batch size, torch threads, recipe version), so a run
with other settings fine-tunes a new teacher instead of reusing a wrong one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: bump when the fine-tuning recipe changes in a way the key does not show
RECIPE_VERSION = 1


def cache_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache folder.

    The first that is set of: ``explicit``, ``$DISTILL_CACHE_DIR``, ``$XDG_CACHE_HOME/distill``;
    else ``~/.cache/distill``.
    """
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("DISTILL_CACHE_DIR"):
        return Path(os.environ["DISTILL_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "distill"
    return Path.home() / ".cache" / "distill"


def teacher_key(*, dataset: str, train_size: int, max_length: int, seed: int, steps: int, lr: float,
                batch_size: int, threads: int | None = None) -> str:
    """Return the folder name of a fine-tuned teacher, e.g. ``rt-n3000-len64-seed0-steps200-lr0.0001-bs32-t1-v1``.

    :param threads: the torch threads it is fine-tuned on, where the caller fixes them (the demo):
        another count rounds differently and gives another teacher, so a warm cache must not hand
        a run the teacher of another count. None (torch's default count) leaves it out of the key.
    """
    threads_part = "" if threads is None else f"-t{threads}"
    return (f"{dataset}-n{train_size}-len{max_length}-seed{seed}-steps{steps}-lr{lr:g}-bs{batch_size}"
            f"{threads_part}-v{RECIPE_VERSION}")


def cached_teacher(root: Path, key: str) -> Path | None:
    """Return the folder of a complete cached teacher, or None."""
    folder = root / "teachers" / key
    return folder if (folder / "info.json").is_file() else None


def store_teacher(root: Path, key: str, model: Any, info: dict[str, Any], tokenizer: Any = None) -> Path:
    """Save ``model`` (a transformers model), its ``tokenizer`` if given, and ``info`` under ``key``.

    The folder appears whole or not at all.
    """
    teachers = root / "teachers"
    teachers.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=teachers))
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        target = teachers / key
        if target.exists():  # an incomplete folder from a crashed run
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def update_info(folder: Path, info: dict[str, Any]) -> None:
    """Rewrite a stored teacher's ``info.json`` (atomically: the teacher stays complete if this is interrupted)."""
    from distill_core.atomic import write_text_atomic

    write_text_atomic(folder / "info.json", json.dumps(info, indent=2) + "\n")
