"""Match losses between attention maps: ``attention_mse``, ``attention_mse_sum``, ``attention_ce``,
``attention_ce_mean``, ``attention_kl``.

Attention maps are (B, H, L, L) or (B, L, L), queries on axis -2 and keys on axis -1; student and
teacher shapes must be equal. With a mask (B, L) (1 = keep), a (query i, key j) entry counts only
if both tokens are kept. ``n_b`` below is the number of kept tokens of example b.

Entries ``≤ −1e−3`` are treated as "masked by the model": real attention probabilities are never
negative, while models add a large negative number to the scores of padded keys.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from distill_core.components import ComponentInfo
from distill_core.errors import ShapeMismatchError
from distill_core.hookspecs import hookimpl
from distill_plugins_losses._common import (
    check_ndim,
    check_same_shape,
    keep_mask,
    masked_mean,
    pair_mask,
    resolve_params,
    safe_div,
    shape_str,
    single_layer,
    student_teacher,
    xlogy_safe,
)

#: Attention entries at or below this are treated as masked out by the model itself.
MASKED_BELOW = -1e-3

AttentionInputs = Literal["scores", "probs"]


class AttentionCEParams(BaseModel):
    """Options of ``attention_ce`` and ``attention_ce_mean``."""

    model_config = ConfigDict(extra="forbid")
    #: "scores": pre-softmax attention scores; "probs": probabilities (``output_attentions``).
    inputs: AttentionInputs = "scores"


class AttentionKLParams(BaseModel):
    """Options of ``attention_kl``."""

    model_config = ConfigDict(extra="forbid")
    #: "probs": attention probabilities (``output_attentions``); "scores": pre-softmax scores.
    inputs: AttentionInputs = "probs"


def _prepare(
    attention_S: Tensor, attention_T: Tensor, mask: Tensor | None, *, heads_may_differ: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Check shapes; return upcast student, detached teacher and the (B, L) keep-mask.

    :param heads_may_differ: the loss reduces over heads first, so only (B, L, L) must agree.
    """
    if heads_may_differ and attention_S.ndim == attention_T.ndim == 4:
        if attention_S.shape[0] != attention_T.shape[0] or attention_S.shape[2:] != attention_T.shape[2:]:
            raise ShapeMismatchError(
                f"Expected student and teacher attention maps to agree in (B, ·, L, L) but got student "
                f"{shape_str(attention_S.shape)} and teacher {shape_str(attention_T.shape)}"
            )
    else:
        check_same_shape(attention_S, attention_T, "attention maps")
    check_ndim(attention_S, (3, 4), "attention maps", "(B, H, L, L) or (B, L, L)")
    if mask is not None and attention_S.shape[-1] != attention_S.shape[-2]:
        raise ShapeMismatchError(
            f"Expected square self-attention maps (..., L, L) to apply a (B, L) mask but got "
            f"attention of shape {shape_str(attention_S.shape)}"
        )
    keep = keep_mask(
        mask,
        (attention_S.shape[0], attention_S.shape[-1]),
        "attention",
        attention_S.shape,
    )
    attention_S, attention_T = student_teacher(attention_S, attention_T)
    return attention_S, attention_T, keep


def _zero_masked(attention: Tensor) -> Tensor:
    return torch.where(attention <= MASKED_BELOW, torch.zeros_like(attention), attention)


def _mse(attention_S: Tensor, attention_T: Tensor, keep: Tensor | None) -> Tensor:
    squared_error = (_zero_masked(attention_S) - _zero_masked(attention_T)).square()
    return masked_mean(squared_error, None if keep is None else pair_mask(keep, attention_S.ndim))


def _mean_over_queries(terms: Tensor, keep: Tensor | None) -> Tensor:
    """Sum ``terms`` (…, L, L) over kept keys, then average over kept (b, h, i) query rows."""
    if keep is None:
        return terms.sum(-1).mean()
    kept_terms = torch.where(pair_mask(keep, terms.ndim), terms, torch.zeros_like(terms))
    heads = terms.shape[1] if terms.ndim == 4 else 1
    return safe_div(kept_terms.sum(), keep.sum().to(terms.dtype) * heads)


def _log_probs(attention: Tensor) -> Tensor:
    """Log of attention probabilities, finite even where a probability is exactly 0."""
    return attention.clamp_min(torch.finfo(attention.dtype).tiny).log()


def _ce(attention_S: Tensor, attention_T: Tensor, keep: Tensor | None, inputs: AttentionInputs) -> Tensor:
    if inputs == "scores":
        p_T = attention_T.softmax(-1)
        if keep is None:
            p_T = torch.where(attention_T <= MASKED_BELOW, torch.zeros_like(p_T), p_T)
        log_q = attention_S.log_softmax(-1)
    else:
        p_T, log_q = attention_T, _log_probs(attention_S)
    return -_mean_over_queries(xlogy_safe(p_T, log_q), keep)


def attention_mse_loss(attention_S: Tensor, attention_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """Return the mean squared error between attention maps over kept (query, key) pairs.

    Entries ``≤ −1e−3`` are set to 0 in both maps first (with or without a mask). No mask: plain
    mean. Mask: ``Σ_{b,h,i,j} (S − T)² m_i m_j / (H · Σ_b n_b²)``. Jiao et al., 2020, "TinyBERT:
    Distilling BERT for Natural Language Understanding".

    :param attention_S: student attention (B, H, L, L) or (B, L, L).
    :param attention_T: teacher attention, same shape (detached here).
    :param mask: (B, L), 1 = keep, or None.
    """
    attention_S, attention_T, keep = _prepare(attention_S, attention_T, mask)
    return _mse(attention_S, attention_T, keep)


def attention_mse_sum_loss(attention_S: Tensor, attention_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """Return :func:`attention_mse_loss` of the head-summed maps (heads summed first if 4-D).

    Lets a student with fewer heads match a teacher: ``Σ_h A_h`` is (B, L, L) for both. With a
    mask the divisor is ``Σ_b n_b²`` (H = 1).

    :param attention_S: student attention (B, H, L, L) or (B, L, L).
    :param attention_T: teacher attention, (B, H_T, L, L): the head counts may differ (detached here).
    :param mask: (B, L), 1 = keep, or None.
    """
    attention_S, attention_T, keep = _prepare(attention_S, attention_T, mask, heads_may_differ=True)
    if attention_S.ndim == 4:
        attention_S, attention_T = attention_S.sum(1), attention_T.sum(1)
    return _mse(attention_S, attention_T, keep)


def attention_ce_loss(
    attention_S: Tensor,
    attention_T: Tensor,
    mask: Tensor | None = None,
    *,
    inputs: AttentionInputs = "scores",
) -> Tensor:
    """Return the cross-entropy from teacher to student attention distributions (over keys).

    Scores (default): ``p_T = softmax(T)``. No mask: ``p_T`` is set to 0 where ``T ≤ −1e−3`` and
    the loss is ``−mean_{b,h,i} Σ_j p_T · log_softmax(S)``. Mask:
    ``−Σ_{b,h,i} m_i Σ_j m_j · p_T · log_softmax(S) / Σ_{b,h,i} m_i`` (the softmax still runs over
    all keys). ``inputs="probs"``: the maps are already probabilities, so ``p_T = T`` and
    ``log(S)`` (clamped at the smallest positive float) replaces ``log_softmax(S)``. Jiao et al.,
    2020, "TinyBERT"; Wang et al., 2020, "MiniLM".

    :param attention_S: student attention (B, H, L, L) or (B, L, L).
    :param attention_T: teacher attention, same shape (detached here).
    :param mask: (B, L), 1 = keep, or None.
    :param inputs: ``"scores"`` or ``"probs"``.
    """
    attention_S, attention_T, keep = _prepare(attention_S, attention_T, mask)
    return _ce(attention_S, attention_T, keep, inputs)


def attention_ce_mean_loss(
    attention_S: Tensor,
    attention_T: Tensor,
    mask: Tensor | None = None,
    *,
    inputs: AttentionInputs = "scores",
) -> Tensor:
    """Return :func:`attention_ce_loss` of the head-averaged maps (heads averaged first if 4-D).

    :param attention_S: student attention (B, H, L, L) or (B, L, L).
    :param attention_T: teacher attention, (B, H_T, L, L): the head counts may differ (detached here).
    :param mask: (B, L), 1 = keep, or None.
    :param inputs: ``"scores"`` or ``"probs"``.
    """
    attention_S, attention_T, keep = _prepare(attention_S, attention_T, mask, heads_may_differ=True)
    if attention_S.ndim == 4:
        attention_S, attention_T = attention_S.mean(1), attention_T.mean(1)
    return _ce(attention_S, attention_T, keep, inputs)


def attention_kl_loss(
    attention_S: Tensor,
    attention_T: Tensor,
    mask: Tensor | None = None,
    *,
    inputs: AttentionInputs = "probs",
) -> Tensor:
    """Return ``KL(p_T ‖ p_S)`` between attention distributions, summed over keys.

    The mean runs over kept (b, h, i) query rows and the sum over kept keys j, as in
    :func:`attention_ce_loss`; ``0 · log 0 = 0``, so zero teacher probabilities contribute nothing.
    ``inputs="probs"`` (default): the maps are probabilities (``output_attentions``);
    ``"scores"``: a softmax over all keys is taken first. Wang et al., 2020, "MiniLM: Deep
    Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers".

    :param attention_S: student attention (B, H, L, L) or (B, L, L).
    :param attention_T: teacher attention, same shape (detached here).
    :param mask: (B, L), 1 = keep, or None.
    :param inputs: ``"probs"`` or ``"scores"``.
    """
    attention_S, attention_T, keep = _prepare(attention_S, attention_T, mask)
    if inputs == "scores":
        log_p_T = attention_T.log_softmax(-1)
        p_T, log_q = log_p_T.exp(), attention_S.log_softmax(-1)
    else:
        p_T, log_p_T, log_q = attention_T, _log_probs(attention_T), _log_probs(attention_S)
    return _mean_over_queries(xlogy_safe(p_T, log_p_T - log_q), keep)


_NAMES = frozenset({"attention_mse", "attention_mse_sum", "attention_ce", "attention_ce_mean", "attention_kl"})


@hookimpl
def declare_components() -> list[ComponentInfo]:
    """Declare the attention match losses of this module."""
    return [
        ComponentInfo(
            kind="match_loss",
            name="attention_mse",
            params=None,
            summary="Mean squared error between attention maps over valid token pairs",
        ),
        ComponentInfo(
            kind="match_loss",
            name="attention_mse_sum",
            params=None,
            summary="Mean squared error between head-summed attention maps",
        ),
        ComponentInfo(
            kind="match_loss",
            name="attention_ce",
            params=AttentionCEParams,
            summary="Cross-entropy from teacher to student attention distributions",
        ),
        ComponentInfo(
            kind="match_loss",
            name="attention_ce_mean",
            params=AttentionCEParams,
            summary="Cross-entropy between head-averaged attention distributions",
        ),
        ComponentInfo(
            kind="match_loss",
            name="attention_kl",
            params=AttentionKLParams,
            summary="KL divergence from teacher to student attention probabilities (MiniLM)",
        ),
    ]


@hookimpl
def compute_match_loss(
    name: str,
    feature_S: Tensor,
    feature_T: Tensor,
    mask: Tensor | None,
    params: BaseModel | None,
) -> Tensor | None:
    """Return the match loss ``name`` if this module provides it, else None."""
    if name not in _NAMES:
        return None
    attention_S = single_layer(feature_S, "student", name)
    attention_T = single_layer(feature_T, "teacher", name)
    if name == "attention_mse":
        return attention_mse_loss(attention_S, attention_T, mask)
    if name == "attention_mse_sum":
        return attention_mse_sum_loss(attention_S, attention_T, mask)
    if name == "attention_kl":
        options = resolve_params(AttentionKLParams, params)
        return attention_kl_loss(attention_S, attention_T, mask, inputs=options.inputs)
    ce_options = resolve_params(AttentionCEParams, params)
    ce_fn = attention_ce_loss if name == "attention_ce" else attention_ce_mean_loss
    return ce_fn(attention_S, attention_T, mask, inputs=ce_options.inputs)


__all__ = [
    "AttentionCEParams",
    "AttentionKLParams",
    "attention_ce_loss",
    "attention_ce_mean_loss",
    "attention_kl_loss",
    "attention_mse_loss",
    "attention_mse_sum_loss",
    "compute_match_loss",
    "declare_components",
]
