"""Knowledge-distillation losses between student and teacher logits: ``ce``, ``mse``, ``kl``, ``bce``.

Logits are (B, C) or (B, L, C). For 3-D logits the mask is the adaptor's ``logits_mask`` (B, L):
means run over the positions where it is 1, which equals selecting those positions first. The
temperature is a positive finite number, a 0-d tensor, a per-example tensor (B,) or, for 3-D logits,
a per-position tensor (B, L) (a temperature scheduler's output), broadcast over the remaining axes;
each row is scaled by its own temperature.

The helpers :func:`prepare_kd_logits`, :func:`scale_rows_by_t2`, :func:`kl_rows` and
:func:`nonnegative` are shared with :mod:`distill_plugins_losses.divergence`.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor

from distill_core.components import ComponentInfo
from distill_core.errors import ShapeMismatchError
from distill_core.hookspecs import hookimpl
from distill_plugins_losses._common import (
    check_ndim,
    check_same_shape,
    keep_mask,
    kept_squared_error_mean,
    masked_mean,
    shape_str,
    student_teacher,
    upcast,
    xlogy_safe,
    zero_dropped,
)

Temperature = float | Tensor


def _check_temperature_number(temperature: object) -> float:
    """Return ``temperature`` as a float if it is a positive finite real number; raise otherwise."""
    if type(temperature) is float and 0.0 < temperature < math.inf:  # the common case, without the ABC check
        return temperature
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(
            f"Expected argument `temperature` to be a number or a tensor of shape (), (B,) or (B, L) but "
            f"got {type(temperature).__name__}"
        )
    value = float(temperature)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"Expected argument `temperature` to be a positive finite number but got {temperature}")
    return value


def _broadcast_temperature(temperature: Temperature, logits: Tensor) -> float | Tensor:
    """Return the temperature ready to divide ``logits``: a float or a tensor that broadcasts over them.

    Accepted: a positive finite number; a 0-d tensor; a per-example tensor (B,) (broadcast as (B, 1)
    or (B, 1, 1)); for (B, L, C) logits also a per-position tensor (B, L) (broadcast as (B, L, 1)),
    what a temperature scheduler gives for token tasks. A number is checked to be positive and
    finite; the values of a tensor are not, since reading them would force a host-device sync every
    step (a temperature scheduler produces positive values by construction).
    """
    if not isinstance(temperature, Tensor):
        return _check_temperature_number(temperature)
    temperature = upcast(temperature).to(device=logits.device)
    if temperature.ndim == 0:
        return temperature
    batch = logits.shape[0]
    shape = tuple(temperature.shape)
    if shape == (batch,):
        return temperature.reshape((batch,) + (1,) * (logits.ndim - 1))
    if logits.ndim == 3 and shape == tuple(logits.shape[:2]):
        return temperature.unsqueeze(-1)
    allowed = f"(B,) = ({batch},)"
    if logits.ndim == 3:
        allowed += f" or (B, L) = {shape_str(logits.shape[:2])}"
    raise ShapeMismatchError(
        f"Expected a tensor `temperature` of shape () or {allowed} for logits of shape "
        f"{shape_str(logits.shape)} but got shape {shape_str(temperature.shape)}"
    )


def prepare_kd_logits(
    logits_S: Tensor, logits_T: Tensor, temperature: Temperature, mask: Tensor | None
) -> tuple[Tensor, Tensor, float | Tensor, Tensor | None]:
    """Check shapes; return softened student/teacher logits, the temperature and the row keep-mask.

    Shared by every KD loss of this package: the student is upcast to float32 (if half or bfloat16),
    the teacher also and detached; both are divided by the broadcast temperature (skipped for a
    temperature of exactly 1.0, which saves two (rows, C) copies on large vocabularies).
    """
    check_same_shape(logits_S, logits_T, "logits")
    check_ndim(logits_S, (2, 3), "logits", "(B, C) or (B, L, C)")
    logits_S, logits_T = student_teacher(logits_S, logits_T)
    tau = _broadcast_temperature(temperature, logits_S)
    if mask is not None and logits_S.ndim == 2 and mask.ndim == 2:
        raise ShapeMismatchError(
            f"Got a (B, L) `mask` of shape {shape_str(mask.shape)} with 2-D logits of shape "
            f"{shape_str(logits_S.shape)}: a logits mask applies to (B, L, C) logits only; pass "
            f"mask=None (or a per-example mask of shape (B,)) for (B, C) logits"
        )
    keep = keep_mask(mask, logits_S.shape[:-1], "logits", logits_S.shape)
    if keep is not None:
        # the teacher's dropped rows (padding: NaN or -inf rows are possible) become zeros, whose
        # uniform distribution keeps every term, and so its gradient, finite
        logits_T = zero_dropped(logits_T, keep)
    if isinstance(tau, float) and tau == 1.0:
        return logits_S, logits_T, tau, keep
    return logits_S / tau, logits_T / tau, tau, keep


def scale_rows_by_t2(row_values: Tensor, tau: float | Tensor) -> Tensor:
    """Return per-row values (rows = ``logits.shape[:-1]``) times each row's own T².

    ``tau`` is what :func:`prepare_kd_logits` returned (its trailing class axis is dropped here).
    """
    if isinstance(tau, Tensor) and tau.ndim > 0:
        tau = tau.squeeze(-1)
    return row_values * (tau * tau)


def nonnegative(row_values: Tensor) -> Tensor:
    """Return ``row_values`` with float round-off below 0 lifted to 0, keeping the gradient intact.

    A divergence is never negative, but summing float32 terms of both signs can give -1e-7 for
    near-equal distributions. Clamping the value alone (straight through) keeps the gradient of the
    unclamped expression: rows that round to a tiny negative value still teach the student.
    """
    return row_values + (row_values.clamp_min(0) - row_values).detach()


def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Return ``KL(p ‖ q) = Σ_c p_c (log p_c − log q_c)`` per row, from log-probabilities.

    Terms with ``p_c = 0`` contribute 0 (no NaN from ``0 · -inf``); the result is never negative.
    """
    return nonnegative(xlogy_safe(log_p.exp(), log_p - log_q).sum(-1))


def kd_ce_loss(
    logits_S: Tensor, logits_T: Tensor, mask: Tensor | None = None, *, temperature: Temperature = 1.0
) -> Tensor:
    """Return the soft cross-entropy between the softened teacher and student distributions.

    ``mean_rows(-Σ_c softmax(z_T/T)_c · log_softmax(z_S/T)_c)``, no T² factor. Rows are examples
    (2-D logits) or positions (3-D logits, only those where ``mask`` is 1). Hinton, Vinyals and
    Dean, 2015, "Distilling the Knowledge in a Neural Network".

    :param logits_S: student logits (B, C) or (B, L, C).
    :param logits_T: teacher logits, same shape (detached here).
    :param mask: (B, L) for 3-D logits ((B,) for 2-D), 1 = keep; None keeps every row.
    :param temperature: a positive finite number, or a tensor (), (B,) or (for 3-D logits) (B, L).
    """
    soft_S, soft_T, _, keep = prepare_kd_logits(logits_S, logits_T, temperature, mask)
    row_ce = -xlogy_safe(soft_T.softmax(-1), soft_S.log_softmax(-1)).sum(-1)
    return masked_mean(row_ce, keep)


def kd_mse_loss(
    logits_S: Tensor, logits_T: Tensor, mask: Tensor | None = None, *, temperature: Temperature = 1.0
) -> Tensor:
    """Return the mean squared error between softened logits, ``mean((z_S/T − z_T/T)²)``.

    The mean is over all elements (of the rows where ``mask`` is 1). Ba and Caruana, 2014, "Do
    Deep Nets Really Need to be Deep?" (logit regression).

    :param logits_S: student logits (B, C) or (B, L, C).
    :param logits_T: teacher logits, same shape (detached here).
    :param mask: (B, L) for 3-D logits ((B,) for 2-D), 1 = keep; None keeps every row.
    :param temperature: a positive finite number, or a tensor (), (B,) or (for 3-D logits) (B, L).
    """
    soft_S, soft_T, _, keep = prepare_kd_logits(logits_S, logits_T, temperature, mask)
    return kept_squared_error_mean(soft_S, soft_T, keep)


def kd_kl_loss(
    logits_S: Tensor, logits_T: Tensor, mask: Tensor | None = None, *, temperature: Temperature = 1.0
) -> Tensor:
    """Return ``T² · mean_rows KL(softmax(z_T/T) ‖ softmax(z_S/T))``.

    The T² factor keeps gradient magnitudes comparable across temperatures (Hinton, Vinyals and
    Dean, 2015, "Distilling the Knowledge in a Neural Network"). With a per-example temperature,
    each row is scaled by its own T². Rows as in :func:`kd_ce_loss`.

    :param logits_S: student logits (B, C) or (B, L, C).
    :param logits_T: teacher logits, same shape (detached here).
    :param mask: (B, L) for 3-D logits ((B,) for 2-D), 1 = keep; None keeps every row.
    :param temperature: a positive finite number, or a tensor (), (B,) or (for 3-D logits) (B, L).
    """
    soft_S, soft_T, tau, keep = prepare_kd_logits(logits_S, logits_T, temperature, mask)
    row_kl = kl_rows(soft_T.log_softmax(-1), soft_S.log_softmax(-1))
    return masked_mean(scale_rows_by_t2(row_kl, tau), keep)


def kd_bce_loss(
    logits_S: Tensor, logits_T: Tensor, mask: Tensor | None = None, *, temperature: Temperature = 1.0
) -> Tensor:
    """Return the multi-label distillation loss ``mean(BCEWithLogits(z_S/T, sigmoid(z_T/T)))``.

    Each class is an independent binary problem whose soft target is the teacher's softened
    sigmoid. The mean is over all elements (of the rows where ``mask`` is 1). No T² factor is
    applied: multiply ``kd_loss_weight`` yourself if you want one.

    :param logits_S: student logits (B, C) or (B, L, C).
    :param logits_T: teacher logits, same shape (detached here).
    :param mask: (B, L) for 3-D logits ((B,) for 2-D), 1 = keep; None keeps every row.
    :param temperature: a positive finite number, or a tensor (), (B,) or (for 3-D logits) (B, L).
    """
    soft_S, soft_T, _, keep = prepare_kd_logits(logits_S, logits_T, temperature, mask)
    elementwise = F.binary_cross_entropy_with_logits(soft_S, soft_T.sigmoid(), reduction="none")
    return masked_mean(elementwise, keep)


KdLossFn = Callable[..., Tensor]

_KD_LOSSES: dict[str, tuple[KdLossFn, str]] = {
    "ce": (kd_ce_loss, "Soft cross-entropy between softened teacher and student distributions"),
    "mse": (kd_mse_loss, "Mean squared error between temperature-scaled logits"),
    "kl": (kd_kl_loss, "T²-scaled KL divergence from teacher to student softmax (Hinton et al.)"),
    "bce": (kd_bce_loss, "Multi-label binary cross-entropy against the teacher's sigmoid"),
}


@hookimpl
def declare_components() -> list[ComponentInfo]:
    """Declare the KD losses of this module (none takes options)."""
    return [
        ComponentInfo(kind="kd_loss", name=name, params=None, summary=summary)
        for name, (_, summary) in _KD_LOSSES.items()
    ]


@hookimpl
def compute_kd_loss(
    name: str,
    logits_S: Tensor,
    logits_T: Tensor,
    temperature: Temperature,
    mask: Tensor | None,
    params: BaseModel | None,
) -> Tensor | None:
    """Return the KD loss ``name`` if this module provides it, else None."""
    entry = _KD_LOSSES.get(name)
    if entry is None:
        return None
    return entry[0](logits_S, logits_T, mask, temperature=temperature)


__all__ = [
    "compute_kd_loss",
    "declare_components",
    "kd_bce_loss",
    "kd_ce_loss",
    "kd_kl_loss",
    "kd_mse_loss",
    "kl_rows",
    "nonnegative",
    "prepare_kd_logits",
    "scale_rows_by_t2",
]
