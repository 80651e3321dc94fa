"""Calibration text from a file: read ``.txt`` or ``.jsonl``, tokenise, and batch in fixed-length blocks.

A ``.txt`` file is one document per non-empty line; a ``.jsonl`` file one JSON object per line whose
``"text"`` field is the document. Each document is tokenised and cut into consecutive windows of at
most ``block_size`` tokens; the batches are padded (``attention_mask`` 0 on padding) and built lazily,
so only one batch of tensors exists at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["read_documents", "token_blocks", "block_batches"]


def read_documents(path: str | Path, *, field: str = "text") -> list[str]:
    """Return the documents of a ``.txt`` (one per non-empty line) or ``.jsonl`` (``field`` of each object) file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such calibration file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        documents = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise ValueError(f"{path}:{number}: expected an object with a string {field!r} field")
            documents.append(record[field])
    elif path.suffix == ".txt":
        documents = lines
    else:
        raise ValueError(f"{path}: expected a .txt or .jsonl calibration file")
    if not documents:
        raise ValueError(f"{path}: holds no text")
    return documents


def token_blocks(tokenizer: Any, documents: list[str], *, block_size: int, max_blocks: int | None = None,
                 add_special_tokens: bool = False) -> list[list[int]]:
    """Return the documents' token ids cut into windows of at most ``block_size`` (the first ``max_blocks``)."""
    blocks: list[list[int]] = []
    for document in documents:
        ids = tokenizer(document, add_special_tokens=add_special_tokens)["input_ids"]
        blocks.extend(ids[start:start + block_size] for start in range(0, len(ids), block_size))
        if max_blocks is not None and len(blocks) >= max_blocks:
            return [block for block in blocks[:max_blocks] if block]
    return [block for block in blocks if block]


def block_batches(blocks: list[list[int]], *, batch_size: int,
                  pad_token_id: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Yield ``input_ids`` and ``attention_mask`` batches of ``batch_size`` blocks, right-padded."""
    for start in range(0, len(blocks), batch_size):
        chunk = blocks[start:start + batch_size]
        length = max(len(block) for block in chunk)
        input_ids = torch.full((len(chunk), length), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, block in enumerate(chunk):
            input_ids[row, :len(block)] = torch.tensor(block, dtype=torch.long)
            attention_mask[row, :len(block)] = 1
        yield {"input_ids": input_ids, "attention_mask": attention_mask}
