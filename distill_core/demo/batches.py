"""Tokenise once, then batch with dynamic padding (each batch is padded to its longest example).

Batches are plain dicts of tensors named as Hugging Face names them (``input_ids``,
``attention_mask``, ``labels``), so distill calls ``model(**batch)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


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


#: per-token input fields padded with 0 (a model input must stay a valid index); other lists get label_pad
ZERO_PADDED = frozenset({"token_type_ids", "position_ids"})


def pad_batch(examples: list[dict[str, Any]], *, pad_token_id: int = 0,
              label_pad: int = -100) -> dict[str, torch.Tensor]:
    """Collate examples into a dict of tensors, padding ``input_ids`` and any per-token list field.

    A list-valued field (token tags, ``token_type_ids``) is padded to the batch's length: with 0 for
    the model inputs in ``ZERO_PADDED``, else with ``label_pad`` (-100, which losses ignore). Scalar
    fields become 1-D tensors.
    """
    length = max(len(example["input_ids"]) for example in examples)
    sizes = [len(example["input_ids"]) for example in examples]
    batch: dict[str, torch.Tensor] = {
        "input_ids": torch.tensor([ex["input_ids"] + [pad_token_id] * (length - n) for ex, n in zip(examples, sizes)]),
        "attention_mask": torch.tensor([[1] * n + [0] * (length - n) for n in sizes]),
    }
    for name in examples[0]:
        if name == "input_ids":
            continue
        values = [example[name] for example in examples]
        if isinstance(values[0], (list, tuple)):
            pad = 0 if name in ZERO_PADDED else label_pad
            batch[name] = torch.tensor([list(v) + [pad] * (length - len(v)) for v in values])
        else:
            batch[name] = torch.tensor(values)
    return batch


class LengthBucketSampler(Sampler[list[int]]):
    """Shuffled batches of similar length, so dynamic padding wastes little compute.

    Each epoch the indices are shuffled, cut into pools of ``batch_size * pool_batches``, each pool
    is sorted by length and cut into batches, and the batches are shuffled. On short, varied texts
    (review snippets) this halves the padded tokens compared with plain shuffling. The order comes
    from a generator seeded with ``seed``: the same seed gives the same epochs.
    """

    def __init__(self, lengths: Sequence[int], *, batch_size: int, seed: int, pool_batches: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.pool = batch_size * pool_batches
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches = []
        for start in range(0, len(order), self.pool):
            pool = sorted(order[start:start + self.pool], key=self.lengths.__getitem__)
            batches.extend(pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size))
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]


def make_loader(dataset: EncodedDataset, *, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Return a DataLoader with dynamic padding.

    With ``shuffle``, batches are drawn by :class:`LengthBucketSampler` (order fixed by ``seed``);
    without, examples keep their order.
    """
    if not shuffle:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=pad_batch)
    lengths = [len(ids) for ids in dataset.input_ids]
    return DataLoader(dataset, batch_sampler=LengthBucketSampler(lengths, batch_size=batch_size, seed=seed),
                      collate_fn=pad_batch)


def make_eval_loader(dataset: EncodedDataset, *, batch_size: int) -> DataLoader:
    """Return a DataLoader for evaluation: batches of similar length, in order of length.

    For metrics that do not depend on the order of the examples (accuracy): sorting by length
    before batching pads little, which makes evaluation about twice as fast on varied texts.
    """
    order = sorted(range(len(dataset)), key=lambda index: len(dataset.input_ids[index]))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, collate_fn=pad_batch)
