"""Helpers shared by the built-in losses: dtype upcast, shape and mask checks, masked reductions.

Everything here works on tensor metadata or with elementwise ops only, so a loss built from these
helpers never forces a host-device sync (no ``.item()``, no data-dependent Python branching).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
from pydantic import BaseModel
from torch import Tensor
from torch.autograd.function import once_differentiable

from distill_core.errors import ShapeMismatchError

ParamsT = TypeVar("ParamsT", bound=BaseModel)

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def upcast(tensor: Tensor) -> Tensor:
    """Return ``tensor`` as float32 if it is half, bfloat16 or not floating point; else unchanged.

    Losses reduce over many elements; doing that in float16 loses precision and overflows easily.
    """
    if tensor.dtype in _LOW_PRECISION or not tensor.is_floating_point():
        return tensor.float()
    return tensor


def student_teacher(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Return both tensors upcast for computing, the teacher detached (gradients reach the student only)."""
    # detach() only where it changes something: teachers usually ran under no_grad (one op less per loss)
    return upcast(student), upcast(teacher.detach() if teacher.requires_grad else teacher)


def shape_str(shape: Sequence[int]) -> str:
    """Format a shape as ``(2, 3, 4)`` for error messages."""
    return str(tuple(int(size) for size in shape))


def check_same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    """Raise :class:`ShapeMismatchError` naming both shapes unless student and teacher shapes agree.

    :param what: what the tensors are, for the message (``"logits"``, ``"hidden states"``, ...).
    """
    if student.shape != teacher.shape:
        raise ShapeMismatchError(
            f"Expected student and teacher {what} to have the same shape but got student "
            f"{shape_str(student.shape)} and teacher {shape_str(teacher.shape)}"
        )


def check_ndim(tensor: Tensor, allowed: Sequence[int], what: str, layout: str) -> None:
    """Raise :class:`ShapeMismatchError` unless ``tensor.ndim`` is one of ``allowed``.

    :param layout: the expected layout for the message, e.g. ``"(B, L, D)"``.
    """
    if tensor.ndim not in allowed:
        raise ShapeMismatchError(
            f"Expected {what} of shape {layout} but got a tensor of shape {shape_str(tensor.shape)}"
        )


def keep_mask(
    mask: Tensor | None, expected: Sequence[int], what: str, shape: Sequence[int] | None = None
) -> Tensor | None:
    """Return ``mask`` as a bool tensor (True = keep), or None when there is no mask.

    A mask may be bool, integer or float 0/1; any nonzero entry counts as "keep".

    :param expected: the shape the mask must have, e.g. ``(B, L)`` taken from the features.
    :param what: the masked tensor, for the message (e.g. ``"logits"``).
    :param shape: the masked tensor's shape, for the message (formatted only on error: this runs
        every step).
    :raises ShapeMismatchError: the mask's shape is not ``expected``.
    """
    if mask is None:
        return None
    if mask.shape != tuple(expected):
        described = what if shape is None else f"{what} of shape {shape_str(shape)}"
        raise ShapeMismatchError(
            f"Expected `mask` of shape {shape_str(expected)} to fit {described} but got a mask of shape "
            f"{shape_str(mask.shape)}"
        )
    if mask.requires_grad:
        mask = mask.detach()
    return mask if mask.dtype == torch.bool else mask != 0


_ZEROS: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def zero_like(values: Tensor) -> Tensor:
    """A cached 0-d zero of ``values``' dtype and device, for ``torch.where`` (no new tensor per call)."""
    key = (values.dtype, values.device)
    zero = _ZEROS.get(key)
    if zero is None:
        zero = _ZEROS[key] = torch.zeros((), dtype=values.dtype, device=values.device)
    return zero


def safe_div(numerator: Tensor, denominator: Tensor) -> Tensor:
    """Return ``numerator / denominator`` for a count ``denominator``, dividing by 1 where it is 0.

    Used with masked sums, whose denominators count kept entries (0, 1, 2, ...): an all-zero mask
    gives a zero numerator, so the result is 0, not NaN, and the graph to the inputs is kept (their
    gradient is zero). One ``clamp_min``, so the step stays a few small kernels.
    """
    return numerator / denominator.clamp_min(1)


def _fit_mask(keep: Tensor, ndim: int) -> Tensor:
    """``keep`` with trailing axes of size 1 added, so a mask of the leading axes broadcasts to ``ndim`` axes."""
    return keep.reshape(keep.shape + (1,) * (ndim - keep.ndim)) if keep.ndim < ndim else keep


def zero_dropped(tensor: Tensor, keep: Tensor | None) -> Tensor:
    """Return ``tensor`` with 0 in every entry ``keep`` drops (``keep`` as in :func:`masked_mean`).

    Apply it to a loss's inputs before any arithmetic: a NaN or infinity in a dropped entry (a
    model's -inf attention scores, a NaN row of padding) then reaches neither the loss nor its
    gradient. Selecting the result alone is not enough: backward multiplies the zero gradient of a
    dropped entry by the input there (``2 · (S − T)`` for a square, ``p`` for ``p · log q``), and
    ``0 · inf`` is NaN. ``torch.where``'s own backward only selects, so it passes an exact 0. A
    tensor without gradient (the teacher's side) takes the same select by bits (:func:`_select`).
    """
    if keep is None:
        return tensor
    keep = _fit_mask(keep, tensor.ndim)
    if not tensor.requires_grad:
        return _select(tensor, keep)
    return torch.where(keep, tensor, zero_like(tensor))


def masked_mean(values: Tensor, keep: Tensor | None) -> Tensor:
    """Return the mean of ``values`` over the entries where ``keep`` is True.

    ``keep`` broadcasts to ``values`` as usual (a (B, 1, L, L) pair mask over heads), or covers their
    leading axes (a (B, L) token mask over (B, L, D) features: every entry of a kept token counts).
    ``torch.where`` rather than multiplication, so a NaN or infinity in a dropped entry (padding)
    cannot leak into the value. (Its gradient is safe when the inputs were passed through
    :func:`zero_dropped` first.) With no mask, the plain mean.

    ``values`` is first summed over the axes the mask does not cover, so the select runs on the
    mask's own shape: each entry of that sum is made of dropped entries only, or of kept ones only.
    The same value, with the (unvectorised) select over far fewer elements.
    """
    if keep is None:
        return values.mean()
    broadcast = _broadcast(values, keep)
    if broadcast > 1:
        if keep.ndim < values.ndim and keep.shape == values.shape[: keep.ndim]:  # a mask of the leading axes
            values = values.sum(tuple(range(keep.ndim, values.ndim)))
        elif keep.ndim == values.ndim:
            axes = [axis for axis, size in enumerate(keep.shape) if size == 1 and values.shape[axis] != 1]
            if axes:
                values = values.sum(axes, keepdim=True)
    total = torch.where(keep, values, zero_like(values)).sum()
    return safe_div(total, _kept_count(keep, broadcast))


def _broadcast(values: Tensor, keep: Tensor) -> int:
    """How many entries of ``values`` each entry of ``keep`` stands for."""
    return values.numel() // keep.numel() if keep.numel() else 1


def _kept_count(keep: Tensor, broadcast: int) -> Tensor:
    count = keep.sum()  # an integer count: no cast; the division gives the float mean
    return count * broadcast if broadcast > 1 else count


#: the integer type of each float type's size, to select floats by their bits
_SAME_SIZE_INTEGER = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def _select(values: Tensor, keep: Tensor) -> Tensor:
    """``torch.where(keep, values, 0)`` (no gradient), computed as a bitwise AND on the floats' bits.

    A kept entry is ANDed with all ones (every bit kept, NaN and infinity included), a dropped one
    with zeros (+0.0). Same result, bit for bit; ``torch.where`` has no vectorised CPU kernel and takes
    about four times as long as this on the CPU.
    """
    integer = _SAME_SIZE_INTEGER.get(values.dtype)
    if integer is None:
        return torch.where(keep, values, zero_like(values))
    return (values.view(integer) & keep.to(integer).neg_()).view(values.dtype)


class _KeptSquaredErrorSum(torch.autograd.Function):
    """``Σ (S − T)²`` over the entries ``keep`` keeps; gradient ``2 (S − T)`` there and exactly 0 elsewhere.

    The difference is selected once in the forward and saved, so the backward is one multiply.
    Written as ``torch.where``, ``square`` and ``sum``, autograd would run a second select in the
    backward (with a zero tensor filled for it) and two multiplies. The sum of squares is one
    ``torch.dot``, which is on no autocast list: it runs in the inputs' float32.
    """

    @staticmethod
    def forward(ctx: Any, student: Tensor, teacher: Tensor, keep: Tensor) -> Tensor:
        difference = _select(student - teacher, keep)
        ctx.save_for_backward(difference)
        flat = difference.reshape(-1)
        return torch.dot(flat, flat)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        (difference,) = ctx.saved_tensors
        grad_student = difference * (grad * 2)  # 0 wherever keep drops: the difference was selected to 0
        grad_teacher = -grad_student if ctx.needs_input_grad[1] else None
        return (grad_student if ctx.needs_input_grad[0] else None), grad_teacher, None


def kept_squared_error_mean(student: Tensor, teacher: Tensor, keep: Tensor | None) -> Tensor:
    """Return the mean of ``(student − teacher)²`` over the entries ``keep`` keeps (``keep`` as in :func:`masked_mean`).

    A NaN or infinity in a dropped entry of either side reaches neither the value nor the
    gradient; at a kept entry it shows in the value. With no mask, the plain mean. An all-zero
    mask gives 0. ``student`` and ``teacher`` must have the same shape.
    """
    if keep is None:
        return (student - teacher).square().mean()
    keep = _fit_mask(keep, student.ndim)
    total = _KeptSquaredErrorSum.apply(student, teacher, keep)
    return safe_div(total, _kept_count(keep, _broadcast(student, keep)))


def pair_mask(keep: Tensor, ndim: int) -> Tensor:
    """Return the (query, key) keep-mask ``m_i · m_j`` of a (B, L) mask, shaped for ``ndim``-D attention.

    (B, L, L) for ``ndim == 3``; (B, 1, L, L) for ``ndim == 4`` (broadcast over heads).
    """
    # the product of the masks as bytes (bool and uint8 share their storage): bool & has no
    # vectorised CPU kernel, uint8 * has
    as_bytes = (keep if keep.dtype == torch.bool else keep != 0).view(torch.uint8)
    pairs = (as_bytes.unsqueeze(-1) * as_bytes.unsqueeze(-2)).view(torch.bool)
    return pairs.unsqueeze(1) if ndim == 4 else pairs


def xlogy_safe(p: Tensor, log_q: Tensor) -> Tensor:
    """Return ``p · log_q`` with the convention ``0 · log 0 = 0`` (no NaN from ``0 · -inf``).

    Only an exact 0 is special: a NaN ``p`` stays NaN in the value, so a broken target shows as a
    non-finite loss at the step it happens instead of as NaN gradients under a finite loss.
    """
    product = p * log_q
    return torch.where(p != 0, product, zero_like(product))


def resolve_params(model: type[ParamsT], params: Any) -> ParamsT:
    """Return ``params`` as an instance of ``model``: defaults for None, validated for a mapping."""
    if params is None:
        return model()
    if isinstance(params, model):
        return params
    if isinstance(params, Mapping):
        return model.model_validate(dict(params))
    if isinstance(params, BaseModel):
        return model.model_validate(params.model_dump())
    raise TypeError(
        f"Expected argument `params` to be a {model.__name__}, a mapping or None but got {type(params).__name__}"
    )


def two_layers(features: Any, side: str, loss: str) -> tuple[Tensor, Tensor]:
    """Return the two layers ``[X0, X1]`` a two-layer loss (gram, mmd) takes from one side.

    :raises ValueError: ``features`` is not a list or tuple of exactly two tensors.
    """
    if (
        not isinstance(features, (list, tuple))
        or len(features) != 2
        or not all(isinstance(item, Tensor) for item in features)
    ):
        got = f"a list of {len(features)}" if isinstance(features, (list, tuple)) else type(features).__name__
        raise ValueError(
            f"Loss `{loss}` compares two layers per model: expected the {side} feature to be a list "
            f"of two tensors [X0, X1] but got {got}; set layer_S/layer_T to a list of two layer "
            f'indices, e.g. "layer_S": [0, 1], "layer_T": [0, 2]'
        )
    return features[0], features[1]


def single_layer(feature: Any, side: str, loss: str) -> Tensor:
    """Return ``feature`` if it is one tensor; a one-layer loss given a list of layers is an error.

    :raises ValueError: ``feature`` is a list or tuple (the match names several layers).
    """
    if isinstance(feature, Tensor):
        return feature
    got = f"a list of {len(feature)}" if isinstance(feature, (list, tuple)) else type(feature).__name__
    raise ValueError(
        f"Loss `{loss}` compares one layer per model: expected the {side} feature to be a tensor "
        f"but got {got}; set layer_S/layer_T to a single layer index"
    )
