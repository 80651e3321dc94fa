"""The teacher cache's files: the record format of the index files, reading them, and folder helpers.

Each rank's ``rank-NNNNN.index`` holds one 64-byte record per entry (:data:`RECORD`): key, offset
and size of its payload in ``rank-NNNNN.data``, its length and rows, its content digest, a checksum
of the payload and one of the record. See :mod:`distill_core.teacher_cache.store` for how entries are
written and read.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_core.errors import DistillError

FORMAT = "distill-teacher-cache"
VERSION = 1
_HEADER = 64  # bytes before the first record / payload; records then stay inside 4 KiB pages
_INDEX_MAGIC = b"DTC-INDEX-1"
_DATA_MAGIC = b"DTC-DATA-1"
RECORD = struct.Struct("<qqqii16s8s8s")  # key, offset, nbytes, length, rows, digest, payload sum, record sum
_ALIGN = 8


def _checksum(data: Any) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


def rebuild_hint(path: Path) -> str:
    return f"delete {path} (or the whole cache directory) to rebuild it, or point teacher_cache.location elsewhere"


def check_extent(data_path: Path, record: Record, size: int) -> None:
    """Raise DistillError unless ``record``'s entry lies within the ``size`` bytes of its data file."""
    if record.offset + record.nbytes > size:
        raise DistillError(
            f"{data_path} is truncated: the entry of example {record.key} ends at byte {record.offset + record.nbytes} "
            f"but the file has {size} bytes (the cache was damaged after it was written; a killed run never leaves "
            f"this); {rebuild_hint(data_path.parent)}"
        )


def check_payload(data_path: Path, record: Record, payload: Any) -> None:
    """Raise DistillError, naming the file and the example, unless ``payload`` matches ``record``'s checksum."""
    if _checksum(payload) != record.checksum:
        raise DistillError(
            f"{data_path}: the entry of example {record.key} at byte {record.offset} is corrupt (checksum mismatch); "
            f"{rebuild_hint(data_path.parent)}"
        )


@dataclass(frozen=True, slots=True)
class Record:
    key: int
    offset: int
    nbytes: int
    length: int
    rows: int
    digest: bytes
    checksum: bytes


_SHARD_INDEX = re.compile(r"rank-(\d+)\.index")


def shard_indexes(folder: Path) -> list[tuple[Path, int]]:
    """The shard index files of a cache folder and their ranks (other files, e.g. copies, are ignored)."""
    found = []
    for path in sorted(folder.glob("rank-*.index")):
        match = _SHARD_INDEX.fullmatch(path.name)
        if match:
            found.append((path, int(match.group(1))))
    return found


def read_records(path: Path, *, torn_tail: str = "ignore") -> tuple[list[Record], int]:
    """The complete records of an index file and the byte size they end at.

    A partial or torn last record is left out (``torn_tail="warn"`` also warns); a bad record before
    the last is an error.
    """
    data = path.read_bytes()
    if len(data) < _HEADER or not data.startswith(_INDEX_MAGIC):
        raise DistillError(f"{path} is not a teacher-cache index (bad or missing header); {rebuild_hint(path.parent)}")
    records: list[Record] = []
    end = _HEADER
    count = (len(data) - _HEADER) // RECORD.size
    for number in range(count):
        start = _HEADER + number * RECORD.size
        raw = data[start : start + RECORD.size]
        fields = RECORD.unpack(raw)
        if _checksum(raw[:-8]) != fields[-1]:
            if number == count - 1:
                break  # torn by a kill (or still being written by another rank)
            raise DistillError(f"{path}: record {number} is corrupt (checksum mismatch); {rebuild_hint(path.parent)}")
        records.append(Record(*fields[:-1]))
        end = start + RECORD.size
    if end != len(data) and torn_tail == "warn":
        warnings.warn(
            f"{path}: dropping an incomplete last record ({len(data) - end} bytes, left by a run killed while "
            f"writing it); its example will be computed again",
            UserWarning,
            stacklevel=3,
        )
    return records, end


def open_directory(location: str) -> Path:
    """The cache directory, created with its ``cache.json`` marker; refuses a non-empty folder that is no cache."""
    root = Path(location).expanduser()
    marker = root / "cache.json"
    if root.exists() and not marker.exists() and any(root.iterdir()):
        raise DistillError(
            f"teacher_cache.location={location!r} is a non-empty directory without a teacher cache (no cache.json); "
            f"choose an empty or new directory, so nothing else in it is overwritten"
        )
    root.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        from distill_core.atomic import write_text_atomic

        write_text_atomic(marker, json.dumps({"format": FORMAT, "version": VERSION}) + "\n")
    else:
        meta = read_json(marker)
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise DistillError(
                f"{marker} is a teacher cache of format {meta.get('format')!r} version {meta.get('version')!r}; this "
                f"distill reads {FORMAT!r} version {VERSION}; {rebuild_hint(root)}"
            )
    return root


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DistillError(f"{path} cannot be read ({exc}); {rebuild_hint(path.parent)}") from None
    if not isinstance(data, dict):
        raise DistillError(f"{path} does not hold a JSON object; {rebuild_hint(path.parent)}")
    return data


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    from distill_core.atomic import write_text_atomic

    write_text_atomic(folder / "meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")


def clear_folder(folder: Path) -> None:
    """Remove a teacher's entries (only the files a cache writes there)."""
    for path in [folder / "meta.json", *folder.glob("rank-*.index"), *folder.glob("rank-*.data")]:
        path.unlink(missing_ok=True)
