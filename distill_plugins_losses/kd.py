"""Knowledge-distillation losses between student and teacher logits: ``ce``, ``mse``, ``kl``, ``bce``.

Logits are (B, C) or (B, L, C). For 3-D logits the mask is the adaptor's ``logits_mask`` (B, L):
means run over the positions where it is 1, which equals selecting those positions first. The
temperature is a positive number or a per-example tensor of shape (B,) (a temperature scheduler's
output), broadcast over the remaining axes.
"""

from __future__ import annotations

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
    masked_mean,
    shape_str,
    student_teacher,
    upcast,
    xlogy_safe,
)

Temperature = float | Tensor


def _broadcast_temperature(temperature: Temperature, logits: Tensor) -> float | Tensor:
    """Return the temperature ready to divide ``logits``: a float, or a tensor (B, 1) / (B, 1, 1)."""
    if isinstance(temperature, Tensor):
        batch = logits.shape[0]
        temperature = upcast(temperature).to(device=logits.device)
        if temperature.ndim == 0:
            return temperature
        if tuple(temperature.shape) != (batch,):
            raise ShapeMismatchError(
                f"Expected a tensor `temperature` of shape (B,) = ({batch},) for logits of shape "
                f"{shape_str(logits.shape)} but got shape {shape_str(temperature.shape)}"
            )
        return temperature.reshape((batch,) + (1,) * (logits.ndim - 1))
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(
            f"Expected argument `temperature` to be a number or a tensor of shape (B,) but got "
            f"{type(temperature).__name__}"
        )
    if not temperature > 0:
        raise ValueError(f"Expected argument `temperature` to be positive but got {temperature}")
    return float(temperature)


def _prepare(
    logits_S: Tensor, logits_T: Tensor, temperature: Temperature, mask: Tensor | None
) -> tuple[Tensor, Tensor, float | Tensor, Tensor | None]:
    """Check shapes; return softened student/teacher logits, the temperature and the row keep-mask."""
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
    return logits_S / tau, logits_T / tau, tau, keep


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
    :param temperature: a positive number or a per-example tensor (B,).
    """
    soft_S, soft_T, _, keep = _prepare(logits_S, logits_T, temperature, mask)
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
    :param temperature: a positive number or a per-example tensor (B,).
    """
    soft_S, soft_T, _, keep = _prepare(logits_S, logits_T, temperature, mask)
    squared_error = (soft_S - soft_T).square()
    return masked_mean(squared_error, None if keep is None else keep.unsqueeze(-1))


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
    :param temperature: a positive number or a per-example tensor (B,).
    """
    soft_S, soft_T, tau, keep = _prepare(logits_S, logits_T, temperature, mask)
    log_p_T = soft_T.log_softmax(-1)
    p_T = log_p_T.exp()
    row_kl = xlogy_safe(p_T, log_p_T - soft_S.log_softmax(-1)).sum(-1, keepdim=True)
    return masked_mean((row_kl * (tau * tau)).squeeze(-1), keep)


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
    :param temperature: a positive number or a per-example tensor (B,).
    """
    soft_S, soft_T, _, keep = _prepare(logits_S, logits_T, temperature, mask)
    elementwise = F.binary_cross_entropy_with_logits(soft_S, soft_T.sigmoid(), reduction="none")
    return masked_mean(elementwise, None if keep is None else keep.unsqueeze(-1))


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
]
