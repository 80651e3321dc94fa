"""The teacher cache as a distiller uses it: look up a batch's examples, run the teachers on misses, store.

Per teacher (a key of the distiller's ``teachers``: 0, 1... or a task name) the cache keeps its own
entries, fingerprint and layout. For each batch, :meth:`TeacherCache.outputs`:

1. describes the batch on the host (keys, lengths, content digests; :mod:`.keys`);
2. looks every example up in every teacher the batch needs; an entry whose digest differs from the
   example's is stale: an error naming the example, or (``on_stale="rebuild"``) a miss;
3. runs only the teachers that missed an example (on the whole batch, as without the cache), keeps
   what the losses read, and stores the missing examples' entries;
4. hands the losses the batch's outputs rebuilt from the entries, hits and fresh ones alike, so a
   step computes the same values whether its examples were stored in this run, an earlier epoch or
   an earlier (killed) run.

The hit path reads no device value: lookups, digests and lengths are host work, and the rebuilt
outputs go to the device in one copy per tensor (from pinned memory on CUDA). Building reads the
teacher's outputs back to the host (a sync per batch, while the teacher runs anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill_core.errors import DistillError
from distill_core.step import TeacherOutput
from distill_core.teacher_cache import fingerprint as fp
from distill_core.teacher_cache.config import TeacherCacheConfig
from distill_core.teacher_cache.keys import KIND_INDEX, BatchExamples, ExampleKeys, describe_batch
from distill_core.teacher_cache.encoder import Encoder
from distill_core.teacher_cache.layout import Entry, Layout
from distill_core.adaptors.logits import logits_view
from distill_core.tracking import Count, Ratio
from distill_core.teacher_cache.store import (
    DiskStore,
    MemoryStore,
    clear_folder,
    open_directory,
    rebuild_hint,
    read_json,
    write_meta,
)

#: fresh outputs of the teachers that ran: ({teacher key: adapted outputs}, {capture key: feature})
RunTeachers = Callable[[list[Any]], tuple[dict[Any, Mapping[str, Any]], dict[tuple, torch.Tensor]]]


def _stored_layout(data: Any, meta_path: Path) -> Layout:
    """The layout recorded in a cache's meta.json, or an error naming the file if it is not one."""
    try:
        return Layout.from_json(data)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise DistillError(
            f"{meta_path}: the stored layout is malformed ({exc!r}); {rebuild_hint(meta_path.parent)}"
        ) from None


@dataclass(frozen=True)
class Selection:
    """What the configured losses read of one teacher: logits, matched layers, masks, custom features."""

    logits: bool
    features: tuple[tuple[str, tuple[int, ...]], ...]
    masks: bool
    custom: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "logits": self.logits,
            "features": {name: list(layers) for name, layers in self.features},
            "masks": self.masks,
            "custom": list(self.custom),
        }


@dataclass
class CacheStats:
    """Counts of one teacher's lookups in this process."""

    hits: int = 0
    misses: int = 0
    stored: int = 0
    rebuilt: int = 0


@dataclass
class _Teacher:
    key: Any
    store: MemoryStore | DiskStore
    encoder: Encoder
    fingerprint: dict[str, Any]
    folder: Path | None
    stats: CacheStats = field(default_factory=CacheStats)


def folder_name(key: Any) -> str:
    """The folder of a teacher's entries: ``teacher-0`` for an index, ``task-<name>`` for a task."""
    if isinstance(key, int):
        return f"teacher-{key}"
    text = str(key)
    if text and all(c.isalnum() or c in "-_." for c in text):
        return f"task-{text}"
    return f"task-{fp.digest_of({'task': text})[:16]}"


class TeacherCache:
    """Stored teacher outputs standing in for the teacher forward (see the module doc).

    :param temperature: the KD temperature (top-k stores the tempered softmax).
    :param vocab_size: ``kd_vocab_size`` (token rows keep their first N entries).
    :param chunk_rows: rows of token logits formed at once while building (None: about 25M logits).
    """

    def __init__(
        self,
        config: TeacherCacheConfig,
        *,
        temperature: float,
        vocab_size: int | None,
        chunk_rows: int | None,
    ) -> None:
        self.config = config
        self.runtime: Any = None  # the runtime of the session that opened the cache (rank, barriers)
        self.temperature = temperature
        self.vocab_size = vocab_size
        self.chunk_rows = chunk_rows
        self.teachers: dict[Any, _Teacher] = {}
        self.kind: str | None = None
        self._kept: dict[Any, _Teacher] = {}  # memory entries outlive close(): the next train() reuses them
        self._interval = [0, 0]  # hits, misses since the last scalars()
        self.last_summary: dict[str, Any] = {}

    @property
    def is_open(self) -> bool:
        return bool(self.teachers)

    # -- opening -----------------------------------------------------------------------------------
    def _fingerprint(self, model: nn.Module, adaptor: Any, selection: Selection, call: Mapping[str, Any]) -> dict:
        config = self.config
        outputs = selection.as_dict() | {
            "top_k": config.top_k,
            "value_dtype": config.value_dtype if config.top_k else None,
            "temperature": self.temperature if config.top_k else None,
            "kd_vocab_size": self.vocab_size,
        }
        return {
            "format": 1,
            "teacher": {"class": type(model).__qualname__, "weights": fp.state_digest(model)},
            "adaptor": fp.code_identity(adaptor),
            "call": fp.call_arguments(dict(call)),
            "outputs": outputs,
            "precision": self.runtime.precision.mode,
            "keys": self.kind,
        }

    def open(
        self, teachers: Mapping[Any, tuple[nn.Module, Any, Selection, Mapping[str, Any]]], kind: str, runtime: Any
    ) -> None:
        """Fingerprint every teacher and open its entries: ``{key: (model, adaptor, selection, call args)}``.

        ``runtime``: the training session's :class:`~distill_core.runtime.Runtime` (rank, barriers).

        All ranks call this together (it may meet at barriers). A stored teacher whose fingerprint
        differs is refused with the differences, or cleared under ``on_stale="rebuild"``.
        """
        if self.is_open:
            if kind != self.kind:
                raise DistillError(
                    f"the teacher cache was opened for keys of kind {self.kind!r} and now gets {kind!r}; use the same "
                    f"kind of data (a DataLoader, or a list of batches) in every call"
                )
            return
        self.kind = kind
        self.runtime = runtime
        config = self.config
        root = Path(config.location).expanduser() if config.on_disk else None
        if root is not None:
            problem = None
            if runtime.is_main:
                try:
                    open_directory(config.location)
                except DistillError as exc:
                    problem = str(exc)
            problem = runtime.broadcast(problem)  # every rank raises, none waits at a barrier for rank 0
            if problem is not None:
                raise DistillError(problem)
        plans = {}
        for key, (model, adaptor, selection, call) in teachers.items():
            current = self._fingerprint(model, adaptor, selection, call)
            folder = None if root is None else root / folder_name(key)
            layout, clear = None, False
            if folder is not None:
                layout, clear = self._check_stored(key, folder, current)
            elif key in self._kept:
                self._check_kept(key, current)
            plans[key] = (folder, current, layout, clear, selection)
        runtime.barrier()  # every rank has read the stored fingerprints before rank 0 changes them
        if runtime.is_main:
            for folder, current, _, clear, _ in plans.values():
                if folder is None:
                    continue
                if clear:
                    clear_folder(folder)
                if clear or not (folder / "meta.json").exists():
                    folder.mkdir(parents=True, exist_ok=True)
                    write_meta(folder, {"fingerprint": current, "digest": fp.digest_of(current), "layout": None})
        runtime.barrier()
        share = kind == KIND_INDEX and (not runtime.distributed or runtime.config.distributed_sampler == "auto")
        for key, (folder, current, layout, _, selection) in plans.items():
            if key in self._kept:
                self.teachers[key] = self._kept[key]
                self.teachers[key].stats = CacheStats()  # counts are per session
                continue
            encoder = Encoder(
                selection, config, temperature=self.temperature, vocab_size=self.vocab_size, chunk_rows=self.chunk_rows
            )
            store = MemoryStore() if folder is None else DiskStore(folder, runtime.rank, share=share)
            encoder.layout = store.layout = layout
            self.teachers[key] = _Teacher(key, store, encoder, current, folder)
            if folder is None:
                self._kept[key] = self.teachers[key]

    def _check_kept(self, key: Any, current: dict) -> None:
        """Memory entries of an earlier train() or build in this process: still this teacher's?"""
        reasons = fp.differences(self._kept[key].fingerprint, current)
        if not reasons:
            return
        if self.config.on_stale == "rebuild":
            del self._kept[key]
            return
        raise DistillError(
            f"the teacher cache in memory holds outputs of teacher {key!r} from an earlier call that differ from what "
            f"this one would compute: " + "; ".join(reasons) + ". Set teacher_cache.on_stale='rebuild' to rebuild them"
        )

    def _check_stored(self, key: Any, folder: Path, current: dict) -> tuple[Layout | None, bool]:
        """The stored layout of a teacher whose fingerprint matches; else refuse, or ask to clear it."""
        meta_path = folder / "meta.json"
        if meta_path.exists():
            meta = read_json(meta_path)
            reasons = fp.differences(meta.get("fingerprint", {}), current)
        elif any(folder.glob("rank-*")):
            reasons = ["its meta.json is missing"]
        else:
            return None, False
        if not reasons:
            return (None if meta.get("layout") is None else _stored_layout(meta["layout"], meta_path)), False
        if self.config.on_stale == "rebuild":
            return None, True
        raise DistillError(
            f"the teacher cache in {folder} was built for other outputs of teacher {key!r}: "
            + "; ".join(reasons)
            + f". Delete {folder} to rebuild it, point teacher_cache.location elsewhere, or set "
            f"teacher_cache.on_stale='rebuild' to rebuild what is stale"
        )

    # -- a batch -----------------------------------------------------------------------------------
    def outputs(
        self,
        keys: ExampleKeys,
        teacher_keys: Sequence[Any],
        run_teachers: RunTeachers,
        device: torch.device,
        *,
        assemble: bool = True,
    ) -> tuple[dict[Any, TeacherOutput], dict[tuple, torch.Tensor]]:
        """The batch's outputs of ``teacher_keys`` and custom-match features, from the cache where it can.

        ``run_teachers(missing)`` returns the fresh adapted outputs of the teachers ``missing`` (and
        their custom-match features); ``assemble=False`` only stores them (building the cache ahead).
        """
        batch = describe_batch(keys)
        found: dict[Any, list[Entry | None]] = {key: self._lookup(self.teachers[key], batch) for key in teacher_keys}
        missing = [key for key in teacher_keys if any(entry is None for entry in found[key])]
        if missing:
            fresh, fresh_captured = run_teachers(missing)
            for key in missing:
                self._store(self.teachers[key], batch, found[key], fresh[key], fresh_captured)
        results: dict[Any, TeacherOutput] = {}
        captured: dict[tuple, torch.Tensor] = {}
        if assemble:
            for key in teacher_keys:
                stored, features, token_rows = self.teachers[key].encoder.assemble(found[key], batch, device)
                logits = None
                if self.teachers[key].encoder.selection.logits:
                    logits = token_rows if token_rows is not None else logits_view(stored)
                results[key] = TeacherOutput(stored, logits)
                captured.update({("teacher", module, key): value for module, value in features.items()})
        return results, captured

    def _lookup(self, teacher: _Teacher, batch: BatchExamples) -> list[Entry | None]:
        entries: list[Entry | None] = []
        for key, digest, got in zip(batch.ids, batch.digests, teacher.store.get_many(batch.ids)):
            if got is not None and got[0].digest != digest:
                if self.config.on_stale == "error":
                    raise DistillError(
                        f"example {self._describe_key(key)} is not the example the teacher cache stored under that key "
                        f"(in {got[1]}): its inputs differ (content digest {got[0].digest.hex()[:12]} stored, "
                        f"{digest.hex()[:12]} now). The data changed since the cache was built; delete "
                        f"{teacher.folder or 'the cache'}, point teacher_cache.location elsewhere, or set "
                        f"teacher_cache.on_stale='rebuild' to rebuild stale entries"
                    )
                teacher.stats.rebuilt += 1
                got = None
            entries.append(None if got is None else got[0])
        hits = sum(entry is not None for entry in entries)
        teacher.stats.hits += hits
        teacher.stats.misses += len(entries) - hits
        self._interval[0] += hits
        self._interval[1] += len(entries) - hits
        return entries

    def _describe_key(self, key: int) -> str:
        if self.kind == KIND_INDEX:
            return f"{key} (dataset index)"
        return f"at batch position {key >> 24}, row {key & 0xFFFFFF}"

    def _store(
        self,
        teacher: _Teacher,
        batch: BatchExamples,
        entries: list[Entry | None],
        fresh: Mapping[str, Any],
        fresh_captured: Mapping[tuple, torch.Tensor],
    ) -> None:
        rows = [row for row, entry in enumerate(entries) if entry is None]
        captured = {module: value for (_, module, key), value in fresh_captured.items() if key == teacher.key}
        had_layout = teacher.encoder.layout is not None
        new = teacher.encoder.encode(fresh, captured, batch, rows)
        if not had_layout:
            teacher.store.layout = teacher.encoder.layout
            if teacher.folder is not None:  # every rank derives the same layout: identical writes
                meta = {
                    "fingerprint": teacher.fingerprint,
                    "digest": fp.digest_of(teacher.fingerprint),
                    "layout": teacher.encoder.layout.to_json(),
                }
                write_meta(teacher.folder, meta)
        unique: dict[int, Entry] = {}
        for row in rows:
            entries[row] = new[row]
            unique.setdefault(batch.ids[row], new[row])  # an example twice in a batch is stored once
        teacher.store.put_many(list(unique.items()))
        teacher.stats.stored += len(unique)

    # -- reporting ---------------------------------------------------------------------------------
    def scalars(self) -> dict[str, Count | Ratio]:
        """This rank's hit rate since the last call and its part of the entries, for the logs (host counters).

        Under torch.distributed the tracker sums the parts: the entries of every rank's files (or
        memory), and the hits over the lookups of all ranks.
        """
        hits, misses = self._interval
        self._interval = [0, 0]
        world_size = 1 if self.runtime is None else self.runtime.world_size
        entries = sum(teacher.store.count(world_size) for teacher in self.teachers.values())
        return {"teacher_cache/entries": Count(entries), "teacher_cache/hit_rate": Ratio(hits, hits + misses)}

    def summary(self) -> dict[str, Any]:
        """Per teacher: entries, bytes, rows, positions and this process's hits, misses and stores."""
        return {
            str(key): teacher.store.summary() | vars(teacher.stats) | {"location": teacher.store.location}
            for key, teacher in self.teachers.items()
        }

    def close(self) -> None:
        """Release the files of a cache on disk; entries in memory stay for the next call in this process.

        :attr:`last_summary` keeps the :meth:`summary` of the session that ends here.
        """
        if self.teachers:
            self.last_summary = self.summary()
        for teacher in self.teachers.values():
            if teacher.folder is not None:
                teacher.store.close()
        self.teachers = {}
        self.kind = None
