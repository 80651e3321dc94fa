"""Atomic file writes: a crash or kill mid-write never leaves a half-written file where a good one was.

One implementation (:func:`write_atomic`): write to a temporary file in the target's folder, flush,
fsync, rename it over the target (atomic on POSIX and Windows), then fsync the folder so the rename
itself survives a power loss. :func:`write_text_atomic` and :func:`save_atomic` (``torch.save``)
are thin wrappers; the temporary file is removed if writing fails or is interrupted.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Create or replace ``path`` with what ``write(handle)`` writes to a binary file handle.

    The old file (if any) stays intact until the new one is complete and durable; if ``write``
    raises (or the process is interrupted by an exception such as ``KeyboardInterrupt``), the
    temporary file is deleted and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`write_atomic`)."""
    data = text.encode(encoding)
    write_atomic(path, lambda handle: handle.write(data))


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`write_atomic`)."""
    import torch

    write_atomic(path, lambda handle: torch.save(obj, handle))


__all__ = ["save_atomic", "write_atomic", "write_text_atomic"]
