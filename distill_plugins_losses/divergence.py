"""Divergences for token-level KD: ``reverse_kl``, ``jsd``, ``tvd``, ``skew_kl``, ``skew_reverse_kl``.

Same contract as :mod:`distill_plugins_losses.kd` (whose ``kl`` is the forward KL): logits (B, C)
or (B, L, V), student first; ``p_S = softmax(z_S / T)``, ``p_T = softmax(z_T / T)``; a (B, L) mask
keeps positions (the mean runs over them only); the temperature is a positive finite number or a
tensor (), (B,) or (B, L). Every divergence is computed per row in float32 (half and bfloat16 inputs
are upcast), is never negative, is multiplied by the row's own T² (like ``kl``) and averaged over
the kept rows; the gradient reaches the student only.

On (rows, V) chunks these are exactly what :func:`distill_core.terms.token_kd.chunked_token_kd` calls.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from distill_core.components import ComponentInfo
from distill_core.hookspecs import hookimpl
from distill_plugins_losses._common import masked_mean, resolve_params, xlogy_safe
from distill_plugins_losses.kd import (
    Temperature,
    kl_rows,
    nonnegative,
    prepare_kd_logits,
    scale_rows_by_t2,
)


class JSDParams(BaseModel):
    """Options of ``jsd``."""

    model_config = ConfigDict(extra="forbid")
    beta: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="teacher weight of the mixture m = beta·p_T + (1−beta)·p_S; 0 = forward KL, "
        "1 = reverse KL, 0.5 = symmetric JSD",
    )


class SkewParams(BaseModel):
    """Options of ``skew_kl`` and ``skew_reverse_kl``."""

    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="skew: weight of the first distribution in the mixture; 0 = plain KL (1 would "
        "make the loss identically 0)",
    )


def _log_mixture(log_p: Tensor, log_q: Tensor, weight_p: float) -> Tensor:
    """Return ``log(weight_p · p + (1 − weight_p) · q)`` from log-probabilities, without underflow.

    Summed in log space (``logaddexp``) so the mixture stays finite where both probabilities
    underflow float32; the weights 0 and 1 return the other input itself.
    """
    if weight_p == 0.0:
        return log_q
    if weight_p == 1.0:
        return log_p
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))


def _reduce(row_values: Tensor, tau: float | Tensor, keep: Tensor | None) -> Tensor:
    """T²-scale the per-row divergences and average them over the kept rows."""
    return masked_mean(scale_rows_by_t2(row_values, tau), keep)


def reverse_kl_loss(
    logits_S: Tensor, logits_T: Tensor, mask: Tensor | None = None, *, temperature: Temperature = 1.0
) -> Tensor:
    """Return ``T² · mean_rows KL(p_S ‖ p_T)``, the reverse (mode-seeking) KL.

    ``KL(p_S ‖ p_T) = Σ_c p_S,c (log p_S,c − log p_T,c)``. Used for LLM distillation by Gu et al.,
    2024, "MiniLLM: Knowledge Distillation of Large Language Models".

    :param logits_S: student logits (B, C) or (B, L, V).
    :param logits_T: teacher logits, same shape (detached here).
    :param mask: (B, L) for 3-D logits ((B,) for 2-D), 1 = keep; None keeps every row.
    :param temperature: a positive finite number, or a tensor (), (B,) or (for 3-D logits) (B, L).
    """
    soft_S, soft_T, tau, keep = prepare_kd_logits(logits_S, logits_T, temperature, mask)
    return _reduce(kl_rows(soft_S.log_softmax(-1), soft_T.log_softmax(-1)), tau, keep)


def jsd_loss(
    logits_S: Tensor,
    logits_T: Tensor,
    mask: Tensor | None = None,
    *,
    temperature: Temperature = 1.0,
    beta: float = 0.5,
) -> Tensor:
    """Return ``T² · mean_rows JSD_β(p_T, p_S)``, the generalised Jensen-Shannon divergence of GKD.

    With the mixture ``m = β·p_T + (1 − β)·p_S``::

        0 < β < 1:  JSD_β = β · KL(p_T ‖ m) + (1 − β) · KL(p_S ‖ m)
        β = 0:      KL(p_T ‖ p_S)   (forward KL, exactly ``kl``)
        β = 1:      KL(p_S ‖ p_T)   (reverse KL, exactly ``reverse_kl``)

    The raw formula tends to 0 at both ends (``m`` becomes one of the two distributions), so the
    endpoints are special-cased to the KLs they approach in shape: ``JSD_β / β → KL(p_T ‖ p_S)`` as
    β → 0 and ``JSD_β / (1 − β) → KL(p_S ‖ p_T)`` as β → 1. Interior values are left unnormalised so
    they equal the GKD paper's JSD(β) (β = 0.5 is the symmetric JSD, at most log 2) and its
    hyperparameters carry over; note the jump in scale at the endpoints (β = 0.01 gives about
    0.01 × the forward KL). Agarwal et al., 2024, "On-Policy Distillation of Language Models:
    Learning from Self-Generated Mistakes" (GKD).

    :param beta: the teacher's weight in the mixture, in [0, 1].
    Other parameters as in :func:`reverse_kl_loss`.
    """
    _check_unit_interval(beta, "beta", upper_open=False)
    soft_S, soft_T, tau, keep = prepare_kd_logits(logits_S, logits_T, temperature, mask)
    log_p_S, log_p_T = soft_S.log_softmax(-1), soft_T.log_softmax(-1)
    if beta == 0.0:
        rows = kl_rows(log_p_T, log_p_S)
    elif beta == 1.0:
        rows = kl_rows(log_p_S, log_p_T)
    else:
        log_m = _log_mixture(log_p_T, log_p_S, beta)
        to_mixture_T = xlogy_safe(log_p_T.exp(), log_p_T - log_m).sum(-1)
        to_mixture_S = xlogy_safe(log_p_S.exp(), log_p_S - log_m).sum(-1)
        rows = nonnegative(beta * to_mixture_T + (1.0 - beta) * to_mixture_S)
    return _reduce(rows, tau, keep)


def tvd_loss(
    logits_S: Tensor, logits_T: Tensor, mask: Tensor | None = None, *, temperature: Temperature = 1.0
) -> Tensor:
    """Return ``T² · mean_rows ½ Σ_c |p_T,c − p_S,c|``, the total variation distance.

    Bounded by 1 per row (before T²); used for LLM distillation by Wen et al., 2023, "f-Divergence
    Minimization for Sequence-Level Knowledge Distillation".
    Parameters as in :func:`reverse_kl_loss`.
    """
    soft_S, soft_T, tau, keep = prepare_kd_logits(logits_S, logits_T, temperature, mask)
    rows = 0.5 * (soft_T.softmax(-1) - soft_S.softmax(-1)).abs().sum(-1)
    return _reduce(rows, tau, keep)


def skew_kl_loss(
    logits_S: Tensor,
    logits_T: Tensor,
    mask: Tensor | None = None,
    *,
    temperature: Temperature = 1.0,
    alpha: float = 0.1,
) -> Tensor:
    """Return ``T² · mean_rows KL(p_T ‖ α·p_T + (1 − α)·p_S)``, the α-skew KL of DistiLLM.

    Mixing a little of the teacher into the student's distribution keeps the divergence and its
    gradient bounded where the student gives a token almost no mass. α = 0 is the forward KL
    (``kl``). Ko et al., 2024, "DistiLLM: Towards Streamlined Distillation for Large Language
    Models" (SKL, α = 0.1 there).

    :param alpha: the teacher's weight in the mixture, in [0, 1).
    Other parameters as in :func:`reverse_kl_loss`.
    """
    _check_unit_interval(alpha, "alpha", upper_open=True)
    soft_S, soft_T, tau, keep = prepare_kd_logits(logits_S, logits_T, temperature, mask)
    log_p_T = soft_T.log_softmax(-1)
    log_mix = _log_mixture(log_p_T, soft_S.log_softmax(-1), alpha)
    return _reduce(kl_rows(log_p_T, log_mix), tau, keep)


def skew_reverse_kl_loss(
    logits_S: Tensor,
    logits_T: Tensor,
    mask: Tensor | None = None,
    *,
    temperature: Temperature = 1.0,
    alpha: float = 0.1,
) -> Tensor:
    """Return ``T² · mean_rows KL(p_S ‖ α·p_S + (1 − α)·p_T)``, the α-skew reverse KL of DistiLLM.

    α = 0 is the reverse KL (``reverse_kl``). Ko et al., 2024, "DistiLLM" (SRKL).

    :param alpha: the student's weight in the mixture, in [0, 1).
    Other parameters as in :func:`reverse_kl_loss`.
    """
    _check_unit_interval(alpha, "alpha", upper_open=True)
    soft_S, soft_T, tau, keep = prepare_kd_logits(logits_S, logits_T, temperature, mask)
    log_p_S = soft_S.log_softmax(-1)
    log_mix = _log_mixture(log_p_S, soft_T.log_softmax(-1), alpha)
    return _reduce(kl_rows(log_p_S, log_mix), tau, keep)


def _check_unit_interval(value: float, name: str, *, upper_open: bool) -> None:
    """Raise ``ValueError`` unless ``0 ≤ value ≤ 1`` (``< 1`` when ``upper_open``)."""
    inside = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not inside:
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"Expected argument `{name}` to be in {interval} but got {value}")


KdLossFn = Callable[..., Tensor]

#: name -> (function, params model or None, one-line summary)
_DIVERGENCES: dict[str, tuple[KdLossFn, type[BaseModel] | None, str]] = {
    "reverse_kl": (reverse_kl_loss, None, "T²-scaled reverse KL(student ‖ teacher), mode-seeking"),
    "jsd": (jsd_loss, JSDParams, "T²-scaled generalised Jensen-Shannon divergence of GKD (beta in [0, 1])"),
    "tvd": (tvd_loss, None, "T²-scaled total variation distance ½·Σ|p_T − p_S|"),
    "skew_kl": (skew_kl_loss, SkewParams, "T²-scaled α-skew KL(teacher ‖ α·teacher + (1−α)·student) of DistiLLM"),
    "skew_reverse_kl": (
        skew_reverse_kl_loss,
        SkewParams,
        "T²-scaled α-skew reverse KL(student ‖ α·student + (1−α)·teacher) of DistiLLM",
    ),
}


@hookimpl
def declare_components() -> list[ComponentInfo]:
    """Declare the divergences of this module with their options."""
    return [
        ComponentInfo(kind="kd_loss", name=name, params=params, summary=summary)
        for name, (_, params, summary) in _DIVERGENCES.items()
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
    """Return the divergence ``name`` if this module provides it, else None."""
    entry = _DIVERGENCES.get(name)
    if entry is None:
        return None
    function, params_model, _ = entry
    options = {} if params_model is None else resolve_params(params_model, params).model_dump()
    return function(logits_S, logits_T, mask, temperature=temperature, **options)


__all__ = [
    "JSDParams",
    "SkewParams",
    "compute_kd_loss",
    "declare_components",
    "jsd_loss",
    "reverse_kl_loss",
    "skew_kl_loss",
    "skew_reverse_kl_loss",
    "tvd_loss",
]
