"""The logits in an adaptor's dict as the KD term reads them, whoever produced them.

A teacher source gives each teacher's KD target as a :class:`LogitsView`. The KD term asks it for
dense logits (``dense()``), for the rows at a set of valid positions one chunk at a time
(``chunks(keep, vocab)``, the chunked token-KD path), and for the number of valid positions of
token-level logits (``count()``, for token means over the whole step). Three producers:

- :class:`DenseLogits`: the adaptor's ``logits``, (B, C) or (B, L, V), one tensor or several;
- :class:`HeadLogits`: the adaptor's final hidden states and output head (``logits_hidden`` and
  ``logits_head``), turned into logits only a chunk of rows at a time;
- stored rows of the teacher-output cache (dense or top-k), in :mod:`distill_core.teacher_cache`.

So the KD term has one code path for all of them, and nothing outside the cache package knows
that stored outputs exist.
"""

from __future__ import annotations

import abc

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from distill_core.errors import DistillError

__all__ = ["DenseLogits", "HeadLogits", "LogitsView", "TeacherChunk", "head_params", "is_chunked", "logits_view"]

#: ``teacher_chunk(start, end) -> (end - start, V)`` teacher logits of those rows
TeacherChunk = Callable[[int, int], Tensor]


def _shape(tensor: Any) -> str:
    return str(tuple(tensor.shape)) if isinstance(tensor, Tensor) else type(tensor).__name__


def is_chunked(results: Mapping[str, Any]) -> bool:
    """Whether adapted outputs give hidden states and a head (``logits_hidden``) instead of logits."""
    return results.get("logits_hidden") is not None


def head_params(head: Any, vocab: int | None) -> tuple[Tensor, Tensor | None]:
    """An output head's weight and bias; for a padded vocabulary (``vocab`` set) its first ``vocab`` rows."""
    weight, bias = head.weight, getattr(head, "bias", None)
    if vocab is not None and weight.shape[0] > vocab:
        weight, bias = weight[:vocab], None if bias is None else bias[:vocab]
    return weight, bias


def _slicer(rows: Tensor) -> TeacherChunk:
    def chunk(start: int, end: int) -> Tensor:
        return rows[start:end]

    return chunk


class LogitsView(abc.ABC):
    """A teacher's logits for one micro-batch (see the module docstring).

    ``mask`` is the (B, L) mask of valid positions of token logits, or None.
    """

    kind = "logits"
    mask: Tensor | None = None

    @abc.abstractmethod
    def describe(self) -> list[tuple[str, tuple[int, ...], int]]:
        """Per KD output: (description, row shape, vocabulary size), for the first-step checks."""

    @abc.abstractmethod
    def token_level(self) -> bool:
        """Whether these are per-position (B, L, V) logits."""

    def count(self) -> Tensor | None:
        """The number of valid positions (a float32 device tensor) for token logits; None otherwise."""
        if not self.token_level():
            return None
        if self.mask is None:
            shape = self.describe()[0][1]
            return torch.tensor(float(shape[0] * shape[1]), device=self.device)
        return (self.mask != 0).sum().to(torch.float32)

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Where the logits are."""

    @abc.abstractmethod
    def dense(self) -> list[Tensor]:
        """The logits tensors themselves, without gradient."""

    @abc.abstractmethod
    def chunks(self, keep: Tensor, vocab: int | None) -> TeacherChunk:
        """``chunk(start, end)``: logits of the valid rows ``keep`` (B, L), in row-major order, a chunk at a time."""


class DenseLogits(LogitsView):
    """The adaptor's ``logits``: one or several tensors, (B, C) or (B, L, V)."""

    kind = "logits"

    def __init__(self, tensors: list[Tensor], mask: Tensor | None) -> None:
        self.tensors = tensors
        self.mask = mask

    def describe(self) -> list[tuple[str, tuple[int, ...], int]]:
        return [(f"logits {_shape(t)}", tuple(t.shape[:-1]), int(t.shape[-1])) for t in self.tensors]

    def token_level(self) -> bool:
        return bool(self.tensors) and isinstance(self.tensors[0], Tensor) and self.tensors[0].dim() == 3

    @property
    def device(self) -> torch.device:
        return self.tensors[0].device

    def dense(self) -> list[Tensor]:
        return self.tensors

    def chunks(self, keep: Tensor, vocab: int | None) -> TeacherChunk:
        logits = self.tensors
        if len(logits) != 1 or logits[0].dim() != 3:
            got = f"{len(logits)} logits tensors" if len(logits) != 1 else f"logits of shape {_shape(logits[0])}"
            raise DistillError(
                "chunked token KD pairs the student's hidden states with one (B, L, V) logits tensor of the "
                f"teacher, but the teacher's adaptor returned {got}; return its token logits (B, L, V) as 'logits'"
            )
        rows = logits[0].to(keep.device)[keep]
        return _slicer(rows if vocab is None else rows[:, :vocab])


class HeadLogits(LogitsView):
    """The adaptor's final hidden states (B, L, D) and output head: logits made a chunk at a time."""

    kind = "logits_hidden"

    def __init__(self, hidden: Tensor, head: Any, mask: Tensor | None) -> None:
        self.hidden = hidden
        self.head = head
        self.mask = mask

    def describe(self) -> list[tuple[str, tuple[int, ...], int]]:
        outputs = int(self.head.weight.shape[0])
        what = f"logits_hidden {_shape(self.hidden)} with logits_head of {outputs} outputs"
        return [(what, tuple(self.hidden.shape[:-1]), outputs)]

    def token_level(self) -> bool:
        return True

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    def dense(self) -> list[Tensor]:
        with torch.no_grad():
            weight, bias = head_params(self.head, None)
            return [torch.nn.functional.linear(self.hidden.to(weight.dtype), weight, bias)]

    def chunks(self, keep: Tensor, vocab: int | None) -> TeacherChunk:
        weight, bias = head_params(self.head, vocab)
        hidden = self.hidden.to(keep.device)[keep]

        def chunk(start: int, end: int) -> Tensor:
            with torch.no_grad():  # in the head's dtype, whatever autocast region produced the hidden states
                return torch.nn.functional.linear(hidden[start:end].to(weight.dtype), weight, bias)

        return chunk


def logits_view(results: Mapping[str, Any]) -> LogitsView:
    """The view of adapted outputs' logits: hidden states and head when given, else ``logits``."""
    mask = results.get("logits_mask")
    if is_chunked(results):
        return HeadLogits(results["logits_hidden"], results.get("logits_head"), mask)
    logits = results.get("logits")
    if logits is None:
        tensors: list[Tensor] = []
    elif isinstance(logits, (list, tuple)):
        tensors = list(logits)
    else:
        tensors = [logits]
    return DenseLogits(tensors, mask)
