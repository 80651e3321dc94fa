"""Tokenise once, then batch with dynamic padding (each batch is padded to its longest example).

Batches are plain dicts of tensors named as Hugging Face names them (``input_ids``,
``attention_mask``, ``labels``), so distill calls ``model(**batch)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


class EncodedDataset(Dataset):
    """Token id lists plus per-example fields (labels, tag ids, span positions...)."""

    def __init__(self, input_ids: list[list[int]], **fields: Sequence[Any]) -> None:
        for name, values in fields.items():
            if len(values) != len(input_ids):
                raise ValueError(f"field {name!r} has {len(values)} values for {len(input_ids)} examples")
        self.input_ids = input_ids
        self.fields = fields

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[index], **{name: values[index] for name, values in self.fields.items()}}


def encode_texts(tokenizer: Any, texts: Sequence[str], labels: Sequence[int] | None, *,
                 max_length: int) -> EncodedDataset:
    """Tokenise ``texts`` (truncated to ``max_length`` tokens) into a dataset; ``labels`` may be None."""
    input_ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    fields = {} if labels is None else {"labels": list(labels)}
    return EncodedDataset(input_ids, **fields)


def pad_batch(examples: list[dict[str, Any]], *, pad_token_id: int = 0, label_pad: int = -100) -> dict[str, torch.Tensor]:
    """Collate examples into a dict of tensors, padding ``input_ids`` and any per-token list field.

    A list-valued field as long as ``input_ids`` (e.g. token tags) is padded with ``label_pad``;
    scalar fields become 1-D tensors.
    """
    length = max(len(example["input_ids"]) for example in examples)
    batch: dict[str, torch.Tensor] = {
        "input_ids": torch.tensor([ex["input_ids"] + [pad_token_id] * (length - len(ex["input_ids"])) for ex in examples]),
        "attention_mask": torch.tensor([[1] * len(ex["input_ids"]) + [0] * (length - len(ex["input_ids"])) for ex in examples]),
    }
    for name in examples[0]:
        if name == "input_ids":
            continue
        values = [example[name] for example in examples]
        if isinstance(values[0], (list, tuple)):
            batch[name] = torch.tensor([list(v) + [label_pad] * (length - len(v)) for v in values])
        else:
            batch[name] = torch.tensor(values)
    return batch


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Return a DataLoader with dynamic padding; with ``shuffle`` its order is fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=pad_batch)
