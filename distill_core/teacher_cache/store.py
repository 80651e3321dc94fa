"""Where entries live: a dict in memory, or append-only memory-mapped files in a directory.

On disk, one folder per teacher holds ``meta.json`` (fingerprint and layout) and, per rank that
wrote entries, two append-only files: ``rank-NNNNN.data`` (the entries' arrays, back to back,
8-byte aligned) and ``rank-NNNNN.index`` (one 64-byte record per entry: key, offset, size, length,
rows, content digest, a checksum of the payload and one of the record). Writing an entry appends
its payload, fsyncs the data file, then appends its record: an entry exists once its record does,
so a process killed at any moment leaves a consistent cache (at worst an unrecorded payload, cut
away when its writer reopens the files, or a torn last record, dropped with a warning). Reads map
the data file (``mmap``), so a cache larger than memory works; each payload's checksum is verified
the first time a process reads it. A data file shorter than its records say, or a checksum that
does not match, is an error naming the file.

Each rank appends to its own files only (a lock guards them against a second writer); with keys
that are dataset indices, a rank also reads the other ranks' files, so an example cached by one
rank is never computed again by another when a ``DistributedSampler`` reshuffles.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from pathlib import Path

import torch

from distill_core.errors import DistillError
from distill_core.teacher_cache.files import (
    _ALIGN,
    _DATA_MAGIC,
    _HEADER,
    _INDEX_MAGIC,
    FORMAT,
    RECORD,
    VERSION,
    Record,
    _checksum,
    check_extent,
    check_payload,
    clear_folder,
    open_directory,
    read_json,
    read_records,
    rebuild_hint,
    shard_indexes,
    write_meta,
)
from distill_core.teacher_cache.layout import Entry, Layout

__all__ = [
    "FORMAT",
    "RECORD",
    "VERSION",
    "DiskStore",
    "MemoryStore",
    "Record",
    "clear_folder",
    "open_directory",
    "read_json",
    "read_records",
    "rebuild_hint",
    "shard_indexes",
    "write_meta",
]

class MemoryStore:
    """Entries in a dict of this process (lost when it ends)."""

    location = "memory"

    def __init__(self) -> None:
        self.entries: dict[int, Entry] = {}
        self.layout: Layout | None = None

    def get(self, key: int) -> tuple[Entry, str] | None:
        entry = self.entries.get(key)
        return None if entry is None else (entry, "memory")

    def get_many(self, keys: tuple[int, ...]) -> list[tuple[Entry, str] | None]:
        return [self.get(key) for key in keys]

    def put_many(self, items: list[tuple[int, Entry]]) -> None:
        self.entries.update(items)

    def count(self, world_size: int = 1) -> int:
        """Entries of this process's memory (each rank has its own: a sum over ranks is the total)."""
        return len(self.entries)

    def summary(self) -> dict[str, int]:
        return {
            "entries": len(self.entries),
            "bytes": sum(entry.nbytes for entry in self.entries.values()),
            "rows": sum(entry.rows for entry in self.entries.values()),
            "positions": sum(entry.length for entry in self.entries.values()),
        }

    def close(self) -> None:
        self.entries.clear()


class _Shard:
    """One rank's index and data files: its records by key, and reads of their payloads."""

    def __init__(self, folder: Path, rank: int) -> None:
        self.rank = rank
        self.index_path = folder / f"rank-{rank:05d}.index"
        self.data_path = folder / f"rank-{rank:05d}.data"
        self.records: dict[int, Record] = {}
        self.index_end = _HEADER
        self._map: mmap.mmap | None = None
        self._verified: set[int] = set()

    def load(self, records: list[Record], end: int) -> None:
        size = self.data_path.stat().st_size if self.data_path.exists() else 0
        for record in records:
            check_extent(self.data_path, record, size)
            self.records[record.key] = record  # a later record of a key (a rebuilt entry) wins
        self.index_end = end

    def refresh(self) -> None:
        """Read the records another rank appended since the last look."""
        if not self.index_path.exists():
            return
        with open(self.index_path, "rb") as handle:
            handle.seek(self.index_end)
            data = handle.read()
        complete = len(data) - len(data) % RECORD.size
        new = []
        for start in range(0, complete, RECORD.size):
            raw = data[start : start + RECORD.size]
            fields = RECORD.unpack(raw)
            if _checksum(raw[:-8]) != fields[-1]:
                break  # being written: look again later
            new.append(Record(*fields[:-1]))
        if new:
            self.load(new, self.index_end + len(new) * RECORD.size)

    def read(self, record: Record, layout: Layout) -> list[torch.Tensor]:
        end = record.offset + record.nbytes
        if self._map is None or len(self._map) < end:
            with open(self.data_path, "rb") as handle:
                # copy-on-write pages: writable for torch.frombuffer, never written back
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        stored = layout.stored(record.length, record.rows)
        fields = [(dtype, shape, torch.Size(shape).numel() * dtype.itemsize) for dtype, shape in stored]
        if record.offset not in self._verified:  # checked on the first read of each entry only
            check_payload(self.data_path, record, memoryview(self._map)[record.offset : end])
            if sum(size + (-size) % _ALIGN for _, _, size in fields) != record.nbytes:
                raise DistillError(
                    f"{self.data_path}: the entry of example {record.key} holds {record.nbytes} bytes, but the layout "
                    f"in meta.json describes another size; the files do not belong together. "
                    f"{rebuild_hint(self.data_path.parent)}"
                )
            self._verified.add(record.offset)
        arrays = []
        offset = record.offset
        for dtype, shape, size in fields:
            if size == 0:
                arrays.append(torch.empty(shape, dtype=dtype))
            else:
                raw = torch.frombuffer(self._map, dtype=torch.uint8, count=size, offset=offset)
                arrays.append(raw.view(dtype).reshape(shape))
            offset += size + (-size) % _ALIGN
        return arrays


class DiskStore:
    """Entries of one teacher in ``folder``: this rank appends to its own shard and may read the others'.

    :param share: read the other ranks' shards too (keys are dataset indices, the same on every rank).
    """

    def __init__(self, folder: Path, rank: int, *, share: bool) -> None:
        self.folder = folder
        self.location = str(folder)
        self.share = share
        self.layout: Layout | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.own = _Shard(folder, rank)
        self._lock_file = open(self.own.index_path, "ab")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise DistillError(
                f"{self.own.index_path} is being written by another process (another run using the same "
                f"teacher_cache.location with the same rank); use another location for concurrent runs"
            ) from None
        self._open_own()
        others = shard_indexes(folder) if share else []  # the other ranks' shards: read only when shared
        self.others = [_Shard(folder, rank) for path, rank in others if path != self.own.index_path]
        for shard in self.others:
            if shard.index_path.stat().st_size < _HEADER:
                continue  # another rank is creating it right now: refresh() reads its records later
            shard.load(*read_records(shard.index_path))

    def _open_own(self) -> None:
        own = self.own
        for path, magic in ((own.index_path, _INDEX_MAGIC), (own.data_path, _DATA_MAGIC)):
            if not path.exists() or path.stat().st_size == 0:
                with open(path, "wb") as handle:
                    handle.write(magic.ljust(_HEADER, b"\0"))
        records, end = read_records(own.index_path, torn_tail="warn")
        if end != own.index_path.stat().st_size:
            os.truncate(own.index_path, end)
        own.load(records, end)
        # payloads written after the last record (a kill between the two writes) are cut away
        used = max([_HEADER] + [r.offset + r.nbytes + (-r.nbytes) % _ALIGN for r in records])
        if own.data_path.stat().st_size > used:
            os.truncate(own.data_path, used)
        self._data_end = used
        self._data = open(own.data_path, "r+b")
        self._index = open(own.index_path, "r+b")

    def get(self, key: int) -> tuple[Entry, str] | None:
        return self.get_many((key,))[0]

    def get_many(self, keys: tuple[int, ...]) -> list[tuple[Entry, str] | None]:
        """The entries of ``keys`` (None where absent); other ranks' new records are read once if any is missing."""
        found = [self._find(key) for key in keys]
        if self.share and any(item is None for item in found):
            for shard in self.others:
                shard.refresh()
            self._adopt_new_shards()
            found = [item if item is not None else self._find(key) for key, item in zip(keys, found)]
        results: list[tuple[Entry, str] | None] = []
        for item in found:
            if item is None:
                results.append(None)
                continue
            shard, record = item
            if self.layout is None:  # another rank's entry, before this rank knows the layout: run the teacher
                results.append(None)
                continue
            arrays = shard.read(record, self.layout)
            results.append((Entry(arrays, record.length, record.rows, record.digest), str(shard.data_path)))
        return results

    def _find(self, key: int) -> tuple[_Shard, Record] | None:
        record = self.own.records.get(key)
        if record is not None:
            return self.own, record
        for shard in self.others:
            record = shard.records.get(key)
            if record is not None:
                return shard, record
        return None

    def _adopt_new_shards(self) -> None:
        known = {shard.index_path for shard in self.others} | {self.own.index_path}
        for path, rank in shard_indexes(self.folder):
            if path not in known:
                shard = _Shard(self.folder, rank)
                shard.refresh()
                self.others.append(shard)

    def put_many(self, items: list[tuple[int, Entry]]) -> None:
        """Append the entries' payloads, fsync, then their records (the commit)."""
        if not items:
            return
        payloads, records = [], []
        offset = self._data_end
        for key, entry in items:
            parts = []
            for array in entry.arrays:
                raw = array.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                parts.append(raw + b"\0" * ((-len(raw)) % _ALIGN))
            payload = b"".join(parts)
            record = (key, offset, len(payload), entry.length, entry.rows, entry.digest, _checksum(payload))
            packed = RECORD.pack(*record, b"\0" * 8)
            records.append(packed[:-8] + _checksum(packed[:-8]))
            payloads.append(payload)
            offset += len(payload)
        self._data.seek(self._data_end)
        self._data.write(b"".join(payloads))
        self._data.flush()
        os.fsync(self._data.fileno())
        self._index.seek(self.own.index_end)
        self._index.write(b"".join(records))
        self._index.flush()
        for packed in records:
            record = Record(*RECORD.unpack(packed)[:-1])
            self.own.records[record.key] = record
        self.own.index_end += len(records) * RECORD.size
        self._data_end = offset

    def count(self, world_size: int = 1) -> int:
        """This rank's part of the records, for the logs (cheap): summed over ``world_size`` ranks, each counts once.

        Its own records, and those of the other shards it reads that no rank of this run writes (left
        by a run with more processes), split among the ranks by rank modulo ``world_size``. In one
        process: every record it reads. Another rank's records are its own to count: this rank's
        view of them lags behind its writes.
        """
        own = self.own.rank
        left = (shard for shard in self.others if shard.rank >= world_size and shard.rank % world_size == own)
        return len(self.own.records) + sum(len(shard.records) for shard in left)

    def summary(self) -> dict[str, int]:
        shards = [self.own, *self.others]
        latest: dict[int, Record] = {}
        for shard in shards:
            latest.update(shard.records)
        size = sum(
            path.stat().st_size for shard in shards for path in (shard.index_path, shard.data_path) if path.exists()
        )
        return {
            "entries": len(latest),
            "bytes": size,
            "rows": sum(r.rows for r in latest.values()),
            "positions": sum(r.length for r in latest.values()),
        }

    def close(self) -> None:
        for handle in (self._data, self._index, self._lock_file):
            with contextlib.suppress(OSError):
                handle.close()


# -- the directory ---------------------------------------------------------------------------------
