"""Which examples a batch holds: their keys, lengths and content digests.

The teacher cache stores outputs per example, so every batch must say which examples it holds.

- A ``torch.utils.data.DataLoader`` over a map-style dataset: the key is the example's index in
  the dataset. :class:`KeyedLoader` rebuilds the loader around a batch sampler that records each
  batch's indices as the loader draws them (shuffling, a ``DistributedSampler``, worker processes
  and ``set_epoch`` work as before, and the wrapper draws nothing from any RNG, so the data order
  is the one the unwrapped loader gives).
- A list (or tuple) of batches: the key is (position of the batch in the list, row in the batch).
  Such a list is not reshuffled between epochs, so a position names the same example every time.
- Anything else (a generator, an ``IterableDataset``) has no stable key: an error names the fix.

Per batch, :func:`describe_batch` reads the batch on the host (before it moves to the device, so a
device batch costs nothing here): the padded input length ``L`` and each example's length (from
``attention_mask``; right padding only), and a digest of each example's input tensors trimmed to
its length, which decides whether a stored entry is still this example's.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from distill_core.data import rebuild_dataloader
from distill_core.errors import DistillError

#: keys are indices into the dataset (a DataLoader): the same example on every rank and in every epoch
KIND_INDEX = "dataset-index"
#: keys are (batch position << 24) | row in a list of batches: the same example in every epoch of one process
KIND_POSITION = "batch-position"
#: no keys: a batch_postprocessor made new examples (e.g. on-policy samples); the teachers run on them
KIND_GENERATED = "generated"
_ROW_BITS = 24


@dataclass(frozen=True)
class ExampleKeys:
    """The keys of one batch's examples, and the batch as it was on the host (for lengths and digests)."""

    ids: tuple[int, ...]
    kind: str
    host_batch: Any

    @property
    def generated(self) -> bool:
        """The batch holds no dataset examples: nothing may be read from or stored in a cache for it."""
        return self.kind == KIND_GENERATED


class _RecordingBatchSampler:
    """Delegates to a batch sampler and keeps each index list it hands out, per iteration, in order."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sampler = getattr(inner, "sampler", None)  # set_sampler_epoch reaches a DistributedSampler here
        self.current: deque[list[int]] = deque()

    def __iter__(self) -> Iterator[list[int]]:
        # A new queue per iteration: an abandoned iterator's prefetched indices never reach the next one.
        queue: deque[list[int]] = deque()
        self.current = queue
        return self._generate(queue)

    def _generate(self, queue: deque[list[int]]) -> Iterator[list[int]]:
        for indices in self.inner:
            indices = [int(index) for index in indices]
            queue.append(indices)
            yield indices

    def __len__(self) -> int:
        return len(self.inner)


class KeyedLoader:
    """Iterates ``(batch, keys)`` over a DataLoader (keys: dataset indices) or a list of batches.

    :param role: how the loader is named in errors (``"the dataloader"``, ``"dataloaders['a']"``).
    """

    def __init__(self, loader: Any, role: str) -> None:
        from torch.utils.data import DataLoader, IterableDataset

        self.role = role
        self._recorder: _RecordingBatchSampler | None = None
        if isinstance(loader, DataLoader):
            if isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None:
                what = "an IterableDataset" if isinstance(loader.dataset, IterableDataset) else "batch_size=None"
                raise DistillError(
                    f"the teacher cache keys each example by its index in the dataset, but {role} is a DataLoader "
                    f"with {what}, which yields no indices; use a map-style dataset with batch_size=N (or a "
                    f"batch_sampler), or a list of batches, or set DistillationConfig.teacher_cache=None"
                )
            if getattr(loader, "in_order", True) is False:
                raise DistillError(
                    f"{role} has in_order=False: its batches may come back in another order than their indices were "
                    f"drawn, so the teacher cache cannot tell which examples a batch holds; use in_order=True"
                )
            self._recorder = _RecordingBatchSampler(loader.batch_sampler)
            self.loader = rebuild_dataloader(loader, batch_sampler=self._recorder)
            self.kind = KIND_INDEX
        elif isinstance(loader, (list, tuple)):
            self.loader = loader
            self.kind = KIND_POSITION
        else:
            raise DistillError(
                f"the teacher cache keys each example by its index in the dataset, but {role} is a "
                f"{type(loader).__name__}, which gives none; pass a torch DataLoader over a map-style dataset or a "
                f"list of batches (keyed by position), or set DistillationConfig.teacher_cache=None"
            )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Any, tuple[int, ...]]]:
        if self._recorder is None:
            for position, batch in enumerate(self.loader):
                rows = batch_rows(batch, self.role)
                yield batch, tuple((position << _ROW_BITS) | row for row in range(rows))
            return
        iterator = iter(self.loader)  # iterates the batch sampler: self._recorder.current is this iteration's
        queue = self._recorder.current
        for batch in iterator:
            yield batch, tuple(queue.popleft())


def _tensors(batch: Any) -> list[tuple[str, Any]]:
    if isinstance(batch, Mapping):
        return [(str(name), value) for name, value in batch.items()]
    if isinstance(batch, (list, tuple)):
        return [(str(index), value) for index, value in enumerate(batch)]
    return [("0", batch)]


def batch_rows(batch: Any, role: str = "the batch") -> int:
    """The number of examples in ``batch``: the first dimension of its first tensor."""
    for _, value in _tensors(batch):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise DistillError(f"{role}: the teacher cache found no tensor in the batch to count its examples")


@dataclass(frozen=True)
class BatchExamples:
    """What the cache knows of a batch before any model runs (all read on the host)."""

    ids: tuple[int, ...]
    kind: str
    digests: tuple[bytes, ...]
    padded_length: int | None  # L: the input sequence's padded length; None: no sequence axis known
    lengths: tuple[int, ...]  # each example's length (== L without an attention_mask)


def _sequence(batch: Any, rows: int) -> tuple[int | None, tuple[int, ...], torch.Tensor | None]:
    fields = dict(_tensors(batch))
    mask = fields.get("attention_mask") if isinstance(batch, Mapping) else None
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == rows:
        return int(mask.shape[1]), (), mask
    candidates = [fields.get("input_ids")] if isinstance(batch, Mapping) else []
    candidates += [value for _, value in _tensors(batch)]
    for value in candidates:
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == rows:
            return int(value.shape[1]), (int(value.shape[1]),) * rows, None
    return None, (0,) * rows, None


def _lengths(mask: torch.Tensor) -> tuple[int, ...]:
    """Each row's number of ones; an error unless every row is ones then zeros (right padding)."""
    real = mask != 0
    lengths = real.sum(1)
    prefix = torch.arange(mask.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    if not torch.equal(real, prefix):
        row = int((real != prefix).any(1).nonzero()[0, 0])
        raise DistillError(
            f"the teacher cache trims each example to its length and pads it again on the right when it is read "
            f"back, but row {row} of this batch's attention_mask is not ones followed by zeros (left padding, or "
            f"holes); pad on the right (tokenizer.padding_side='right') or set DistillationConfig.teacher_cache=None"
        )
    return tuple(int(value) for value in lengths.tolist())


def _update(digest: Any, name: str, value: Any) -> None:
    digest.update(name.encode())
    if isinstance(value, torch.Tensor):
        value = value.detach().contiguous()
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        if value.numel():
            digest.update(memoryview(value.reshape(-1).view(torch.uint8).numpy()))
    else:
        digest.update(repr(value).encode())


def describe_batch(keys: ExampleKeys) -> BatchExamples:
    """Lengths and per-example content digests of a batch (reads it on the host; a device batch is copied).

    A digest covers every tensor of the batch row by row, trimmed to the example's length along its
    first sequence axis (the axis of length ``L``), plus per-example lists (e.g. raw texts); tensors
    without a row per example enter every example's digest whole.
    """
    batch = keys.host_batch
    rows = batch_rows(batch)
    if len(keys.ids) != rows:
        raise DistillError(
            f"the batch holds {rows} examples but its sampler drew {len(keys.ids)} dataset indices; the teacher cache "
            f"needs one row per index (a collate_fn must not drop or add examples)"
        )
    fields = [(name, value.cpu() if isinstance(value, torch.Tensor) else value) for name, value in _tensors(batch)]
    host = {name: value for name, value in fields}
    padded, lengths, mask = _sequence(host if isinstance(batch, Mapping) else [v for _, v in fields], rows)
    if mask is not None:
        lengths = _lengths(mask)
    shared = hashlib.blake2b(digest_size=16)
    per_row = []
    for name, value in fields:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
            per_row.append((name, value))
        elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) == rows:
            per_row.append((name, value))
        else:
            _update(shared, name, value)
    common = shared.digest()
    digests = []
    for row in range(rows):
        digest = hashlib.blake2b(common, digest_size=16)
        for name, value in per_row:
            item = value[row]
            if isinstance(item, torch.Tensor) and padded is not None and item.dim() > 0 and item.shape[0] == padded:
                item = item[: lengths[row]]
            _update(digest, name, item)
        digests.append(digest.digest())
    return BatchExamples(keys.ids, keys.kind, tuple(digests), padded, tuple(lengths))
