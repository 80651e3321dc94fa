"""Chunked token-level KD: a KD loss over many positions without the full (rows, V) logits.

A causal LM's output head turns N valid positions into (N, V) logits; with V ≈ 50k-250k that, times
the copies a divergence and its backward keep, dwarfs the rest of a step. Here the student's logits
are formed from its final hidden states and head weight one chunk of rows at a time, the teacher's
likewise (or from a stored cache), and the KD loss runs on that chunk alone, so peak memory is
about one chunk of (rows, V) whatever N is (DESIGN §9).

Gradients are formed in the forward: for each chunk, the student logits are a detached leaf, the
chunk loss is differentiated with :func:`torch.autograd.grad`, and the chain rule through the head
(``grad_hidden = g · W``, ``grad_W += gᵀ · hidden``, ``grad_b += Σ g``) is applied at once; only
those gradients (the size of the hidden rows and of the head) are kept. The autograd Function's
backward then scales them by the incoming gradient and returns them, so they reach the real
parameters inside the one ordinary backward pass: DistributedDataParallel's gradient hooks fire as
for any other parameter, gradient accumulation adds up as usual, nothing is written into ``.grad``
directly, and no chunk's logits outlive its loop iteration. (Recomputing each chunk in backward
instead would repeat the head matmul and the loss forward: about a third more work for no saving.)

Any KD plugin gets this path: the loss is called on 2-D (rows, V) logits exactly as
``compute_kd_loss`` is, with a per-row temperature, and must reduce as a mean over rows.

Typical use in a training step (``mask`` marks the valid positions of the micro-batch)::

    kd_loss = kd_loss_for_rows("jsd", {"beta": 0.5})
    rows_S = student_hidden[mask]                     # (N, D_S), requires grad
    rows_T = teacher_hidden[mask]                     # (N, D_T), computed under no_grad
    kd_sum, ce_sum = chunked_token_kd(
        kd_loss, rows_S, lm_head_S.weight, lm_head_S.bias,
        teacher_logits_from_head(rows_T, lm_head_T.weight, lm_head_T.bias),
        temperature=2.0, labels=labels[mask])
    loss = (kd_weight * kd_sum + hard_label_weight * ce_sum) / tokens_in_step
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from distill_core.errors import ShapeMismatchError

#: ``kd_loss(logits_S_rows, logits_T_rows, temperature_rows) -> scalar mean over the rows``
RowKdLoss = Callable[[Tensor, Tensor, "float | Tensor"], Tensor]
#: ``teacher_chunk(start, end) -> (end - start, V)`` teacher logits of those rows
TeacherChunk = Callable[[int, int], Tensor]

#: Logit elements (rows × V) per chunk when no ``chunk_size`` is given: 512 rows at V = 49,152,
#: i.e. about 96 MB per (rows, V) float32 tensor, whatever the vocabulary. Chosen by measurement
#: (``python benchmarks/lm_kd_memory.py --sweep``, jsd, 4,096 rows, V = 49,152, D = 576, float32
#: CPU; table in docs/losses.md): time is flat from 256 to 2,048 rows per chunk, while peak memory
#: grows linearly with the chunk, about 12 (rows, V) float32 tensors (logits of both models, the
#: divergence's saved intermediates and their gradients); 512 rows keeps it near 1.4 GB against
#: 9.8 GB for full logits.
DEFAULT_CHUNK_ELEMENTS = 512 * 49_152


def default_chunk_size(vocab_size: int) -> int:
    """Return the default rows per chunk for a vocabulary of ``vocab_size``: ``DEFAULT_CHUNK_ELEMENTS // V``."""
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, vocab_size))


def teacher_logits_from_head(hidden_T: Tensor, weight_T: Tensor, bias_T: Tensor | None = None) -> TeacherChunk:
    """Return a ``teacher_chunk(start, end)`` that computes teacher logits rows from its head.

    ``F.linear(hidden_T[start:end], weight_T, bias_T)`` under ``torch.no_grad()``, in the head's
    dtype (hidden states from an autocast region are cast to it).

    :param hidden_T: the teacher's final hidden states of the same valid rows, (N, D_T).
    :param weight_T: the teacher's output head weight (V, D_T).
    :param bias_T: its bias (V,), or None.
    """
    _check_head(hidden_T, weight_T, bias_T, "T")

    def teacher_chunk(start: int, end: int) -> Tensor:
        with torch.no_grad():
            return F.linear(hidden_T[start:end].to(weight_T.dtype), weight_T, bias_T)

    return teacher_chunk


def kd_loss_for_rows(name: str, params: Any = None) -> RowKdLoss:
    """Return the registered KD loss ``name`` as a ``kd_loss(logits_S, logits_T, temperature)``.

    The registry binds the name to its provider once, here; ``params`` (a mapping, a params model
    or None) is validated by the component's params model.
    """
    from pydantic import ValidationError

    from distill_core.registry import get_registry  # the registry loads plugins; only on demand

    component = get_registry().get("kd_loss", name)
    try:
        validated = component.validate_params(dict(params) if isinstance(params, Mapping) else params)
    except ValidationError as exc:
        raise ValueError(f"invalid params for KD loss {name!r}: {exc}") from exc

    def kd_loss(logits_S: Tensor, logits_T: Tensor, temperature: float | Tensor) -> Tensor:
        return component.call_in_order(logits_S, logits_T, temperature, None, validated)

    kd_loss.__name__ = name
    return kd_loss


def chunked_token_kd(
    kd_loss: RowKdLoss,
    hidden_S: Tensor,
    head_weight_S: Tensor,
    head_bias_S: Tensor | None,
    teacher_chunk: TeacherChunk,
    *,
    temperature: float | Tensor = 1.0,
    chunk_size: int | None = None,
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Return the SUM over rows of the KD loss (and of the student's cross-entropy), chunk by chunk.

    Equals ``kd_loss(F.linear(hidden_S, W, b), teacher_logits, temperature) · N`` (and
    ``F.cross_entropy(logits_S, labels, reduction="sum")``) in value and in the gradients of
    ``hidden_S``, ``W`` and ``b``, but never holds more than ``chunk_size`` rows of logits. Divide by
    the number of tokens of the optimisation step to get the mean over tokens.

    :param kd_loss: ``kd_loss(logits_S_rows, logits_T_rows, temperature_rows)`` returning the mean
        over the rows, e.g. :func:`kd_loss_for_rows`; called on 2-D float logits of the head's dtype.
    :param hidden_S: the student's final hidden states of the valid rows only, (N, D_S).
    :param head_weight_S: the student's output head weight (V, D_S); may be frozen or tied.
    :param head_bias_S: its bias (V,), or None.
    :param teacher_chunk: ``teacher_chunk(start, end)`` returning (end − start, V) teacher logits of
        those rows, e.g. :func:`teacher_logits_from_head` or dense chunks of a top-k cache.
    :param temperature: a positive finite number, a 0-d tensor or a per-row tensor (N,), sliced per
        chunk (a per-row temperature reaches the loss as its per-example (rows,) tensor).
    :param chunk_size: rows per chunk; None: :func:`default_chunk_size` of the vocabulary (512 rows
        at V = 49,152), so a chunk's memory does not grow with the vocabulary.
    :param labels: (N,) class ids for the hard-label loss; rows labelled -100 are ignored. None: the
        second result is None.
    :returns: ``(kd_sum, ce_sum)``, float32 scalars; ``ce_sum`` is None without ``labels``.
    """
    rows = _check_inputs(hidden_S, head_weight_S, head_bias_S, temperature, chunk_size, labels)
    plan = _Plan(
        kd_loss=kd_loss,
        teacher_chunk=teacher_chunk,
        temperature=temperature.detach() if isinstance(temperature, Tensor) else float(temperature),
        chunk_size=default_chunk_size(head_weight_S.shape[0]) if chunk_size is None else int(chunk_size),
        labels=labels,
        rows=rows,
    )
    inputs = (hidden_S, head_weight_S, head_bias_S)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        kd_sum, ce_sum = _ChunkedTokenKD.apply(hidden_S, head_weight_S, head_bias_S, plan)
    else:
        kd_sum, ce_sum, _ = _walk_chunks(plan, hidden_S, head_weight_S, head_bias_S, (False, False, False))
    return kd_sum, (ce_sum if labels is not None else None)


@dataclass
class _Plan:
    """The non-tensor arguments of one chunked call (never stored on the autograd graph)."""

    kd_loss: RowKdLoss
    teacher_chunk: TeacherChunk
    temperature: float | Tensor
    chunk_size: int
    labels: Tensor | None
    rows: int


@dataclass
class _Gradients:
    """Gradients of one loss w.r.t. hidden rows, head weight and bias (None where not needed)."""

    hidden: Tensor | None
    weight: Tensor | None
    bias: Tensor | None

    @classmethod
    def zeros(cls, hidden: Tensor, weight: Tensor, bias: Tensor | None, needed: tuple[bool, ...]) -> _Gradients:
        # head gradients add up over chunks: keep them in float32 whatever the head's dtype
        return cls(
            hidden=torch.empty_like(hidden) if needed[0] else None,
            weight=torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needed[1] else None,
            bias=torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if needed[2] else None,
        )

    def add_chunk(self, grad_logits: Tensor | None, hidden_rows: Tensor, weight: Tensor, start: int, end: int) -> None:
        """Apply the chain rule through ``logits = hidden_rows · Wᵀ + b`` for one chunk."""
        if grad_logits is None:  # the loss did not depend on the student logits
            if self.hidden is not None:
                self.hidden[start:end] = 0
            return
        if self.hidden is not None:
            self.hidden[start:end] = grad_logits @ weight
        if self.weight is not None:
            if grad_logits.dtype == torch.float32:
                self.weight.addmm_(grad_logits.t(), hidden_rows)
            else:
                self.weight.add_(grad_logits.t() @ hidden_rows)
        if self.bias is not None:
            self.bias.add_(grad_logits.sum(0, dtype=torch.float32))

    def as_tuple(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return self.hidden, self.weight, self.bias


def _walk_chunks(
    plan: _Plan, hidden: Tensor, weight: Tensor, bias: Tensor | None, needed: tuple[bool, bool, bool]
) -> tuple[Tensor, Tensor, tuple[_Gradients, _Gradients | None] | None]:
    """Run every chunk; return the KD and CE sums and, if any gradient is ``needed``, the gradients."""
    want_grads = any(needed)
    kd_grads = _Gradients.zeros(hidden, weight, bias, needed) if want_grads else None
    ce_grads = _Gradients.zeros(hidden, weight, bias, needed) if want_grads and plan.labels is not None else None
    kd_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    ce_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    vocab = weight.shape[0]
    # Logits in the head's dtype, as the model computes them, whatever autocast region we run in.
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        for start in range(0, plan.rows, plan.chunk_size):
            end = min(start + plan.chunk_size, plan.rows)
            hidden_rows = hidden[start:end].detach().to(weight.dtype)
            with torch.no_grad():
                logits_T = plan.teacher_chunk(start, end)
                logits_S = F.linear(hidden_rows, weight.detach(), None if bias is None else bias.detach())
            if tuple(logits_T.shape) != (end - start, vocab):
                raise ShapeMismatchError(
                    f"Expected `teacher_chunk({start}, {end})` to return teacher logits of shape "
                    f"({end - start}, {vocab}) (rows, the student's vocabulary size) but got "
                    f"{tuple(logits_T.shape)}; teacher and student vocabularies must agree"
                )
            temperature = plan.temperature
            if isinstance(temperature, Tensor) and temperature.ndim == 1:
                temperature = temperature[start:end]
            labels = None if plan.labels is None else plan.labels[start:end]
            with torch.enable_grad():
                logits_S.requires_grad_(want_grads)
                kd_chunk = _chunk_kd(plan.kd_loss, logits_S, logits_T, temperature) * (end - start)
                ce_chunk = None if labels is None else F.cross_entropy(logits_S.float(), labels, reduction="sum")
            kd_sum += kd_chunk.detach()
            if ce_chunk is not None:
                ce_sum += ce_chunk.detach()
            if want_grads:
                for loss, grads in ((kd_chunk, kd_grads), (ce_chunk, ce_grads)):
                    if loss is None or grads is None:
                        continue
                    (grad_logits,) = torch.autograd.grad(loss, logits_S, allow_unused=True)
                    grads.add_chunk(grad_logits, hidden_rows, weight, start, end)
            del logits_S, logits_T, kd_chunk, ce_chunk  # one chunk of logits at a time
    return kd_sum, ce_sum, ((kd_grads, ce_grads) if want_grads else None)


def _chunk_kd(kd_loss: RowKdLoss, logits_S: Tensor, logits_T: Tensor, temperature: float | Tensor) -> Tensor:
    value = kd_loss(logits_S, logits_T, temperature)
    if not isinstance(value, Tensor) or value.ndim != 0:
        raise TypeError(
            f"Expected `kd_loss` to return a scalar tensor (the mean over the chunk's rows) but got "
            f"{type(value).__name__ if not isinstance(value, Tensor) else f'shape {tuple(value.shape)}'}"
        )
    return value.float()


class _ChunkedTokenKD(torch.autograd.Function):
    """Forward walks the chunks and forms the gradients; backward only scales and returns them."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, plan: _Plan) -> tuple[Tensor, Tensor]:
        needed = tuple(bool(flag) for flag in ctx.needs_input_grad[:3])
        kd_sum, ce_sum, grads = _walk_chunks(plan, hidden, weight, bias, needed)  # type: ignore[arg-type]
        ctx.grads = grads
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        if plan.labels is None:
            ctx.mark_non_differentiable(ce_sum)
        return kd_sum, ce_sum

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_kd: Tensor, grad_ce: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.grads is None:
            raise RuntimeError(
                "chunked_token_kd's gradients were formed in its forward and are handed out once: do "
                "not run backward through it twice (retain_graph=True)"
            )
        kd_grads, ce_grads = ctx.grads
        ctx.grads = None  # free the stored gradients as soon as they are handed out
        results: list[Tensor | None] = []
        for index, (from_kd, dtype) in enumerate(zip(kd_grads.as_tuple(), ctx.dtypes)):
            if from_kd is None:
                results.append(None)
                continue
            total = from_kd.mul_(grad_kd)  # in place: these buffers are used once
            if ce_grads is not None:
                total.add_(ce_grads.as_tuple()[index].mul_(grad_ce))
            results.append(total.to(dtype))
        return results[0], results[1], results[2], None


def _check_head(hidden: Tensor, weight: Tensor, bias: Tensor | None, side: str) -> None:
    if hidden.ndim != 2:
        raise ShapeMismatchError(
            f"Expected `hidden_{side}` of shape (N, D_{side}) (the valid rows only, e.g. "
            f"hidden_states[mask]) but got shape {tuple(hidden.shape)}"
        )
    if weight.ndim != 2 or weight.shape[1] != hidden.shape[1]:
        raise ShapeMismatchError(
            f"Expected the output head weight of shape (V, D_{side}) with D_{side} = {hidden.shape[1]} "
            f"(the width of `hidden_{side}`) but got shape {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ShapeMismatchError(
            f"Expected the output head bias of shape (V,) = ({weight.shape[0]},) but got shape {tuple(bias.shape)}"
        )


def _check_inputs(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    temperature: float | Tensor,
    chunk_size: int | None,
    labels: Tensor | None,
) -> int:
    """Check shapes and options (metadata only: no host-device sync); return the number of rows N."""
    _check_head(hidden, weight, bias, "S")
    rows = hidden.shape[0]
    if isinstance(temperature, Tensor):
        if temperature.ndim not in (0, 1) or (temperature.ndim == 1 and temperature.shape[0] != rows):
            raise ShapeMismatchError(
                f"Expected a tensor `temperature` of shape () or (N,) = ({rows},) but got shape "
                f"{tuple(temperature.shape)}"
            )
    elif isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(
            f"Expected argument `temperature` to be a number or a tensor but got {type(temperature).__name__}"
        )
    elif not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"Expected argument `temperature` to be a positive finite number but got {temperature}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1
    ):
        raise ValueError(f"Expected argument `chunk_size` to be a positive integer but got {chunk_size!r}")
    if labels is not None and (tuple(labels.shape) != (rows,) or labels.is_floating_point()):
        raise ShapeMismatchError(
            f"Expected `labels` to be integer class ids of shape (N,) = ({rows},) but got a "
            f"{labels.dtype} tensor of shape {tuple(labels.shape)}"
        )
    return rows


__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "RowKdLoss",
    "TeacherChunk",
    "chunked_token_kd",
    "default_chunk_size",
    "kd_loss_for_rows",
    "teacher_logits_from_head",
]
