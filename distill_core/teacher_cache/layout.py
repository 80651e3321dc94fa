"""What a cache entry holds: one example's share of a teacher's adapted outputs.

An entry is a list of arrays in the order of the :class:`Layout` (fixed per teacher by the first
batch stored; :mod:`.encoder` makes entries and rebuilds batches from them):

- tensors (class logits, hidden states, attention maps, custom-match features) with their sequence
  axes trimmed to the example's length: the axes of length ``L`` (the batch's padded input length)
  where that feature runs over the input sequence (hidden states: positions; self-attention: query
  and key positions; cross-attention: keys; a custom feature (B, L, ...): its second axis, or both
  axes of (B, H, L, L)). Decoder-side features and logits over classes or positions are stored as
  they are and must keep their shape from batch to batch;
- masks (``inputs_mask``, ``masks[feature]``, ``logits_mask``) as bits, their dtype restored;
- token logits (B, L, V), or a chunked teacher's hidden states × head, as the rows where
  ``logits_mask`` is set: V logits per row, or top-k (:mod:`.topk`).

Reading a batch back pads every trimmed axis to the batch's length again (zeros, False), so a
loss sees the shapes the teacher would give; positions past an example's length are zeros, which
masked losses never read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from distill_core.errors import DistillError

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def dtype_named(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise DistillError(f"the teacher cache's layout names an unknown dtype {name!r}; rebuild the cache")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def pack_bits(values: Tensor) -> Tensor:
    """0/1 values (any shape) as uint8 bytes, 8 to a byte, most significant bit first."""
    flat = values.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    count = math.prod(shape)
    bits = packed.unsqueeze(1).bitwise_and(_BIT_WEIGHTS).ne(0).reshape(-1)[:count]
    return bits.reshape(tuple(shape)).to(dtype)


@dataclass(frozen=True)
class FieldSpec:
    """One stored array: where it goes in the adapted outputs, its kind, dtype and per-example dims.

    ``dims``: ints are fixed; ``"L"`` / ``"L-1"`` are the example's length (minus one) on a trimmed
    axis; ``"N"`` is the example's number of token rows.
    """

    path: tuple[Any, ...]
    kind: str  # "tensor" | "bits" | "rows"
    dtype: str
    dims: tuple[Any, ...]

    def shape(self, length: int, rows: int, padded: int | None = None) -> tuple[int, ...]:
        """The per-example shape (``padded``: the batch's length instead of the example's)."""
        size = length if padded is None else padded
        names = {"L": size, "L-1": max(size - 1, 0), "N": rows}
        return tuple(names.get(dim, dim) if isinstance(dim, str) else dim for dim in self.dims)

    def stored(self, length: int, rows: int) -> tuple[torch.dtype, tuple[int, ...]]:
        """The dtype and shape of the array an entry holds for this field."""
        shape = self.shape(length, rows)
        if self.kind == "bits":
            return torch.uint8, ((math.prod(shape) + 7) // 8,)
        return dtype_named(self.dtype), shape

    def label(self) -> str:
        head, *rest = self.path
        return head + "".join(f"[{part!r}]" for part in rest)


@dataclass(frozen=True)
class Layout:
    """The fields of a teacher's entries; ``layers``: the length of each feature list; ``vocab``: rows' V."""

    fields: tuple[FieldSpec, ...]
    layers: tuple[tuple[str, int], ...]
    logits_list: bool
    vocab: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": [
                {"path": list(f.path), "kind": f.kind, "dtype": f.dtype, "dims": list(f.dims)} for f in self.fields
            ],
            "layers": dict(self.layers),
            "logits_list": self.logits_list,
            "vocab": self.vocab,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Layout:
        fields = tuple(FieldSpec(tuple(f["path"]), f["kind"], f["dtype"], tuple(f["dims"])) for f in data["fields"])
        return cls(fields, tuple(data["layers"].items()), bool(data["logits_list"]), data["vocab"])

    def stored(self, length: int, rows: int) -> list[tuple[torch.dtype, tuple[int, ...]]]:
        return [field.stored(length, rows) for field in self.fields]


@dataclass
class Entry:
    """One example's stored arrays (aligned with the layout's fields), its length, rows and digest."""

    arrays: list[Tensor]
    length: int
    rows: int
    digest: bytes

    @property
    def nbytes(self) -> int:
        return sum(array.numel() * array.element_size() for array in self.arrays)
