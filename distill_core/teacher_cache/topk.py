"""Token logits from the cache: dense rows or top-k, handed to the loss as dense (rows, V) chunks.

Top-k, at temperature T (the config's; a temperature scheduler is refused with top-k):

- stored per valid position: the k largest ``log p_j`` of ``p = softmax(z / T)`` (the full softmax,
  over all V entries), their indices j, and the remaining mass ``m = Σ_{j ∉ top-k} p_j``;
- read back as logits ``z̃ = T · log p̃``, so that the loss plugin's own ``softmax(z̃ / T)`` is
  ``p̃``: the stored probabilities on the top k and, on the other V − k entries, ``m / (V − k)``
  each (``missing_mass="spread"``) or 0 (``"zero"``, the default: the top k renormalised by the softmax).

A plugin therefore sees ordinary logits and needs no special case. Entries without mass get
``log p̃ = -10,000`` rather than ``-inf``: probability exactly 0 in float32, and no ``0 · -inf`` NaN in
a plugin that multiplies a probability by its log. A KD loss must be a function of the softmax (its
value unchanged when a constant is added to a row of teacher logits): ``mse`` on logits is not, and
is refused with top-k. With k = V nothing is approximated: the losses equal the dense ones to float
rounding (``value_dtype="float32"``; bfloat16 values carry about 3 significant digits).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from distill_core.adaptors.logits import LogitsView, TeacherChunk

#: the log-probability of an entry without mass (exp underflows to exactly 0 in float32)
LOG_FLOOR = -10_000.0
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def index_dtype(vocab: int) -> torch.dtype:
    """uint16 indices up to 65,536 entries, int32 beyond."""
    return torch.uint16 if vocab <= 2**16 else torch.int32


def encode_top_k(logits: Tensor, k: int, temperature: float, value_dtype: str) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(values (n, k), indices (n, k), mass (n,))`` of rows of teacher logits (n, V).

    ``values`` are the top-k log-probabilities of ``softmax(logits / T)``, ``mass`` the probability
    outside them, summed directly over those entries (not ``1 − Σ top-k``, which cancels when the
    top k hold nearly everything).
    """
    log_p = torch.log_softmax(logits.float() / temperature, dim=-1)
    top = torch.topk(log_p, k, dim=-1)
    rest = log_p.exp().scatter_(-1, top.indices, 0.0)
    dtype = _DTYPES[value_dtype]
    values = top.values.clamp_min(LOG_FLOOR).to(dtype)
    return values, top.indices.to(index_dtype(logits.shape[-1])), rest.sum(-1).to(dtype)


def densify(values: Tensor, indices: Tensor, mass: Tensor, vocab: int, temperature: float, missing_mass: str) -> Tensor:
    """Return the (n, V) float32 logits ``T · log p̃`` of stored top-k rows (see the module doc)."""
    rows, k = values.shape
    rest = vocab - k
    if missing_mass == "spread" and rest > 0:
        fill = torch.log(mass.float().clamp_min(0.0) / rest).clamp_min(LOG_FLOOR)
    else:
        fill = torch.full((rows,), LOG_FLOOR, dtype=torch.float32, device=values.device)
    dense = fill.unsqueeze(1).expand(rows, vocab).contiguous()
    dense.scatter_(1, indices.to(torch.int64), values.float())
    return dense if temperature == 1.0 else dense.mul_(temperature)


class TeacherRows(LogitsView):
    """A teacher's token logits at the valid positions of a batch, read from the cache.

    The KD term reads them as it reads any teacher's logits (a
    :class:`~distill_core.adaptors.logits.LogitsView`): ``chunks(keep, vocab)`` gives these rows, which
    are the positions of the same mask in the same order; ``dense()`` places them in (B, L, V).

    The rows are the True entries of ``mask`` (B, L) in row-major order, the order in which the
    chunked token-KD path gathers the student's rows. Dense rows are returned as stored; top-k rows
    are densified one chunk at a time, so (B·L, V) is never held on that path.

    :param positions: (N,) the rows' flat indices into (B·L), or None to take them from ``mask``
        (a boolean index, which reads the device on CUDA).
    :param rows: dense (N, V) logits, or None for top-k.
    :param top_k: ``(values, indices, mass)`` of the top-k rows, or None for dense.
    """

    def __init__(
        self,
        mask: Tensor,
        *,
        vocab: int,
        positions: Tensor | None = None,
        rows: Tensor | None = None,
        top_k: tuple[Tensor, Tensor, Tensor] | None = None,
        temperature: float = 1.0,
        missing_mass: str = "zero",
    ) -> None:
        self.mask = mask
        self.flat_positions = positions
        self.vocab = vocab
        self.rows = rows
        self.top_k = top_k
        self.temperature = temperature
        self.missing_mass = missing_mass

    kind = "cached"

    def describe(self) -> list[tuple[str, tuple[int, ...], int]]:
        what = f"cached token logits at positions {self.positions} of {self.vocab} entries"
        return [(what, self.positions, self.vocab)]

    def token_level(self) -> bool:
        return True

    def count(self) -> Tensor:
        return self.mask.sum().to(torch.float32)  # always with a mask

    @property
    def device(self) -> torch.device:
        return self.mask.device

    def chunks(self, keep: Tensor, vocab: int | None) -> TeacherChunk:
        return self.chunk  # stored at the same mask's positions, in the same order, first N entries already

    @property
    def positions(self) -> tuple[int, ...]:
        """(B, L): the positions of the batch these rows belong to."""
        return tuple(self.mask.shape)

    def __len__(self) -> int:
        return int(self.rows.shape[0]) if self.rows is not None else int(self.top_k[0].shape[0])

    def chunk(self, start: int, end: int) -> Tensor:
        """Rows ``start:end`` as dense (end − start, V) logits (the ``teacher_chunk`` of chunked token KD)."""
        if self.rows is not None:
            return self.rows[start:end]
        values, indices, mass = (part[start:end] for part in self.top_k)
        return densify(values, indices, mass, self.vocab, self.temperature, self.missing_mass)

    def dense(self) -> list[Tensor]:
        """[(B, L, V) logits]: the rows at their positions, zeros (a uniform row) where ``mask`` is False."""
        rows = self.rows if self.rows is not None else self.chunk(0, len(self))
        full = torch.zeros((*self.positions, self.vocab), dtype=rows.dtype, device=rows.device)
        if self.flat_positions is None:
            full[self.mask] = rows
        else:
            full.view(-1, self.vocab).index_copy_(0, self.flat_positions, rows)
        return [full]


def is_shift_invariant(row_loss: object, temperature: float) -> bool:
    """Whether a KD loss ``row_loss(logits_S, logits_T, T)`` ignores a constant added to each teacher row.

    Top-k rows are log-probabilities, equal to the logits only up to such a constant. A probe on
    small random rows (float64-free, CPU): a softmax-based loss gives the same value both ways.
    """
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(4, 16, generator=generator)
    teacher = torch.randn(4, 16, generator=generator) * 3
    shift = torch.randn(4, 1, generator=generator) * 5
    with torch.no_grad():
        base = float(row_loss(student, teacher, temperature))
        moved = float(row_loss(student, teacher + shift, temperature))
    return math.isclose(base, moved, rel_tol=1e-4, abs_tol=1e-6)
