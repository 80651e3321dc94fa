"""``distill cache info DIR``: what a teacher-cache directory holds, read without loading any model.

Per teacher: entries (distinct examples), bytes on disk (data, index and meta files of every rank),
tokens (the token-logits rows stored, or the input positions when there are no token logits),
bytes per token, the fingerprint and the stored fields. ``verify=True`` also reads every payload and
checks its checksum (the whole cache is read once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill_core.errors import DistillError
from distill_core.teacher_cache.fingerprint import digest_of
from distill_core.teacher_cache.store import (
    _HEADER,
    FORMAT,
    check_extent,
    check_payload,
    read_json,
    read_records,
    shard_indexes,
)


def describe_cache(location: str | Path, *, verify: bool = False) -> dict[str, Any]:
    """A summary of the cache at ``location`` (a dict, JSON-ready)."""
    root = Path(location).expanduser()
    marker = root / "cache.json"
    if not marker.exists():
        raise DistillError(f"{root} holds no teacher cache (no cache.json); give the teacher_cache.location of a run")
    header = read_json(marker)
    teachers = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and (p / "meta.json").exists()):
        teachers[folder.name] = _describe_teacher(folder, verify)
    return {
        "location": str(root),
        "format": header.get("format", FORMAT),
        "version": header.get("version"),
        "teachers": teachers,
    }


def _describe_teacher(folder: Path, verify: bool) -> dict[str, Any]:
    meta = read_json(folder / "meta.json")
    layout = meta.get("layout") or {}
    fields = layout.get("fields", [])
    token_rows = any(field["kind"] == "rows" for field in fields)
    latest: dict[int, tuple] = {}
    shards = {}
    size = (folder / "meta.json").stat().st_size
    for index, _ in shard_indexes(folder):
        data = index.with_suffix(".data")
        records, _ = read_records(index)
        data_size = data.stat().st_size if data.exists() else 0
        size += index.stat().st_size + data_size
        for record in records:
            check_extent(data, record, data_size)
            latest[record.key] = (record.length, record.rows)
        if verify and records:
            _verify(data, records)
        shards[index.stem] = {"records": len(records), "data_bytes": data_size, "index_bytes": index.stat().st_size}
    tokens = sum(rows if token_rows else length for length, rows in latest.values())
    fingerprint = meta.get("fingerprint", {})
    return {
        "entries": len(latest),
        "bytes": size,
        "tokens": tokens,
        "token_kind": "token-logits rows" if token_rows else "input positions",
        "bytes_per_token": size / tokens if tokens else None,
        "fingerprint": meta.get("digest") or digest_of(fingerprint),
        "teacher": fingerprint.get("teacher", {}),
        "outputs": fingerprint.get("outputs", {}),
        "precision": fingerprint.get("precision"),
        "keys": fingerprint.get("keys"),
        "fields": [_field_text(field) for field in fields],
        "shards": shards,
        "verified": verify,
    }


def _verify(data: Path, records: list[Any]) -> None:
    with open(data, "rb") as handle:
        if not handle.read(_HEADER).startswith(b"DTC-DATA"):
            raise DistillError(f"{data} is not a teacher-cache data file (bad header)")
        for record in records:
            handle.seek(record.offset)
            check_payload(data, record, handle.read(record.nbytes))


def _field_text(field: dict[str, Any]) -> str:
    head, *rest = field["path"]
    name = head + "".join(f"[{part!r}]" for part in rest)
    dims = ", ".join(str(dim) for dim in field["dims"])
    kind = " as bits" if field["kind"] == "bits" else ""
    return f"{name} ({dims}) {field['dtype']}{kind}"


def format_cache(summary: dict[str, Any]) -> str:
    """The summary as the lines ``distill cache info`` prints."""
    lines = [f"teacher cache at {summary['location']} ({summary['format']} v{summary['version']})"]
    if not summary["teachers"]:
        lines.append("  no teacher has entries yet")
    for name, info in summary["teachers"].items():
        per_token = "-" if info["bytes_per_token"] is None else f"{info['bytes_per_token']:,.1f}"
        lines.append(
            f"{name}: {info['entries']:,} entries, {info['bytes']:,} bytes, {info['tokens']:,} tokens "
            f"({info['token_kind']}), {per_token} bytes/token"
        )
        teacher, outputs = info["teacher"], info["outputs"]
        lines.append(
            f"  fingerprint {info['fingerprint']}: {teacher.get('class')} weights {teacher.get('weights')}, "
            f"precision {info['precision']}, keys {info['keys']}"
        )
        lines.append(f"  outputs {json.dumps(outputs, sort_keys=True)}")
        lines.append(f"  fields: {'; '.join(info['fields']) or '(none yet)'}")
        for shard, counts in info["shards"].items():
            lines.append(f"  {shard}: {counts['records']:,} records, {counts['data_bytes']:,} data bytes")
        if info["verified"]:
            lines.append("  every payload checksum verified")
    return "\n".join(lines)
