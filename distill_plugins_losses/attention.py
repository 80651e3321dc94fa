"""Match losses between attention maps: ``attention_mse``, ``attention_mse_sum``, ``attention_ce``,
``attention_ce_mean``, ``attention_kl``.

Attention maps are (B, H, Lq, Lk) or (B, Lq, Lk), queries on axis -2 and keys on axis -1; student
and teacher shapes must be equal. Self-attention maps are square (Lq = Lk = L); cross-attention maps
of encoder-decoders are (B, H, L_dec, L_enc).

Masks (1 = keep), bool, integer or float:

- (B, L), for square maps: a (query i, key j) entry counts only if both tokens are kept
  (``m_i m_j``). ``n_b`` below is the number of kept tokens of example b.
- (B, Lq, Lk), a pair mask, for any map (cross-attention included): entry (i, j) counts where the
  mask is 1. A (B, L) mask ``m`` is the pair mask ``m_i m_j``; every formula below holds with
  ``Σ_b n_b²`` read as the number of kept pairs, and a query row counts when any of its pairs is kept.

Without a mask, entries ``≤ −1e−3`` are treated as "masked by the model": real attention
probabilities are never negative, while models add a large negative number to the scores of padded
keys. With a mask, the mask alone decides what counts and the values are used as they are: a kept
pre-softmax score may well be negative, and zeroing it would change the loss (TextBrewer's masked
losses do not zero either).
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
    kept_squared_error_mean,
    pair_mask,
    resolve_params,
    safe_div,
    shape_str,
    single_layer,
    student_teacher,
    xlogy_safe,
    zero_dropped,
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
    """Check shapes; return upcast student, detached teacher and the bool pair mask, or None.

    The pair mask is (B, Lq, Lk), or (B, 1, Lq, Lk) for 4-D maps so it broadcasts over heads.

    :param heads_may_differ: the loss reduces over heads first, so only (B, Lq, Lk) must agree.
    """
    if heads_may_differ and attention_S.ndim == attention_T.ndim == 4:
        if attention_S.shape[0] != attention_T.shape[0] or attention_S.shape[2:] != attention_T.shape[2:]:
            raise ShapeMismatchError(
                f"Expected student and teacher attention maps to agree in (B, ·, Lq, Lk) but got student "
                f"{shape_str(attention_S.shape)} and teacher {shape_str(attention_T.shape)}"
            )
    else:
        check_same_shape(attention_S, attention_T, "attention maps")
    check_ndim(attention_S, (3, 4), "attention maps", "(B, H, Lq, Lk) or (B, Lq, Lk)")
    pairs = _pair_mask(mask, attention_S)
    attention_S, attention_T = student_teacher(attention_S, attention_T)
    return attention_S, attention_T, pairs


def _pair_mask(mask: Tensor | None, attention: Tensor) -> Tensor | None:
    """Return the bool (query, key) keep-mask of a (B, L) token mask or a (B, Lq, Lk) pair mask."""
    if mask is None:
        return None
    batch, queries, keys = attention.shape[0], attention.shape[-2], attention.shape[-1]
    if mask.ndim == 3:
        pairs = keep_mask(mask, (batch, queries, keys), "attention", attention.shape)
        assert pairs is not None
        return pairs.unsqueeze(1) if attention.ndim == 4 else pairs
    if mask.ndim == 2 and queries != keys:
        raise ShapeMismatchError(
            f"Expected square self-attention maps (..., L, L) to apply a (B, L) mask but got attention of "
            f"shape {shape_str(attention.shape)}; for cross-attention pass a (B, Lq, Lk) pair mask, "
            f"e.g. decoder_mask[:, :, None] * encoder_mask[:, None, :]"
        )
    if mask.ndim != 2:
        raise ShapeMismatchError(
            f"Expected `mask` of shape (B, L) = {shape_str((batch, keys))} or a pair mask (B, Lq, Lk) = "
            f"{shape_str((batch, queries, keys))} to fit attention of shape {shape_str(attention.shape)} but got "
            f"a mask of shape {shape_str(mask.shape)}"
        )
    keep = keep_mask(mask, (batch, keys), "attention", attention.shape)
    assert keep is not None
    return pair_mask(keep, attention.ndim)


def _zero_masked(attention: Tensor) -> Tensor:
    return torch.where(attention <= MASKED_BELOW, torch.zeros_like(attention), attention)


def _mse(attention_S: Tensor, attention_T: Tensor, pairs: Tensor | None) -> Tensor:
    if pairs is None:  # no mask: drop what the model masked itself (large negative scores)
        return (_zero_masked(attention_S) - _zero_masked(attention_T)).square().mean()
    # with a mask, the mask alone decides; kept negative scores are real values
    return kept_squared_error_mean(attention_S, attention_T, pairs)


def _mean_over_queries(terms: Tensor, pairs: Tensor | None) -> Tensor:
    """Sum ``terms`` (…, Lq, Lk) over kept keys, then average over kept (b, h, i) query rows.

    A query row is kept when any of its pairs is (for a (B, L) mask: when token i is kept).
    """
    if pairs is None:
        return terms.sum(-1).mean()
    kept_terms = torch.where(pairs, terms, torch.zeros_like(terms))
    heads = terms.shape[1] if terms.ndim == 4 else 1
    kept_rows = pairs.any(-1).sum().to(terms.dtype) * heads
    return safe_div(kept_terms.sum(), kept_rows)


def _log_probs(attention: Tensor) -> Tensor:
    """Log of attention probabilities, finite even where a probability is exactly 0."""
    return attention.clamp_min(torch.finfo(attention.dtype).tiny).log()


def _ce(attention_S: Tensor, attention_T: Tensor, pairs: Tensor | None, inputs: AttentionInputs) -> Tensor:
    if inputs == "scores":
        p_T = attention_T.softmax(-1)
        if pairs is None:
            p_T = torch.where(attention_T <= MASKED_BELOW, torch.zeros_like(p_T), p_T)
        log_q = attention_S.log_softmax(-1)
    else:
        p_T, log_q = attention_T, _log_probs(attention_S)
    # dropped pairs get p_T = 0, so their (NaN, -inf) terms give an exact 0 gradient as well
    return -_mean_over_queries(xlogy_safe(zero_dropped(p_T, pairs), log_q), pairs)


def attention_mse_loss(attention_S: Tensor, attention_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """Return the mean squared error between attention maps over kept (query, key) pairs.

    No mask: entries ``≤ −1e−3`` are set to 0 in both maps, then the plain mean. Mask (B, L):
    ``Σ_{b,h,i,j} (S − T)² m_i m_j / (H · Σ_b n_b²)``, the values used as they are (no zeroing);
    pair mask (B, Lq, Lk): ``Σ (S − T)² M_bij / (H · Σ M)``. Jiao et al., 2020, "TinyBERT:
    Distilling BERT for Natural Language Understanding".

    :param attention_S: student attention (B, H, Lq, Lk) or (B, Lq, Lk).
    :param attention_T: teacher attention, same shape (detached here).
    :param mask: (B, L) for square maps, or a (B, Lq, Lk) pair mask; 1 = keep; or None.
    """
    attention_S, attention_T, pairs = _prepare(attention_S, attention_T, mask)
    return _mse(attention_S, attention_T, pairs)


def attention_mse_sum_loss(attention_S: Tensor, attention_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """Return :func:`attention_mse_loss` of the head-summed maps (heads summed first if 4-D).

    Lets a student with fewer heads match a teacher: ``Σ_h A_h`` is (B, Lq, Lk) for both. With a
    mask the divisor is ``Σ_b n_b²`` (H = 1) and, as in :func:`attention_mse_loss`, nothing is zeroed.

    :param attention_S: student attention (B, H, Lq, Lk) or (B, Lq, Lk).
    :param attention_T: teacher attention, (B, H_T, Lq, Lk): the head counts may differ (detached here).
    :param mask: (B, L) for square maps, or a (B, Lq, Lk) pair mask; 1 = keep; or None.
    """
    attention_S, attention_T, pairs = _prepare(attention_S, attention_T, mask, heads_may_differ=True)
    if attention_S.ndim == 4:
        attention_S, attention_T = attention_S.sum(1), attention_T.sum(1)
        pairs = None if pairs is None else pairs.squeeze(1)
    return _mse(attention_S, attention_T, pairs)


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
    all keys). A pair mask (B, Lq, Lk) ``M`` replaces ``m_i m_j`` by ``M_ij`` and ``m_i`` by "row i
    has a kept pair". ``inputs="probs"``: the maps are already probabilities, so ``p_T = T`` and
    ``log(S)`` (clamped at the smallest positive float) replaces ``log_softmax(S)``. Jiao et al.,
    2020, "TinyBERT"; Wang et al., 2020, "MiniLM".

    :param attention_S: student attention (B, H, Lq, Lk) or (B, Lq, Lk).
    :param attention_T: teacher attention, same shape (detached here).
    :param mask: (B, L) for square maps, or a (B, Lq, Lk) pair mask; 1 = keep; or None.
    :param inputs: ``"scores"`` or ``"probs"``.
    """
    attention_S, attention_T, pairs = _prepare(attention_S, attention_T, mask)
    return _ce(attention_S, attention_T, pairs, inputs)


def attention_ce_mean_loss(
    attention_S: Tensor,
    attention_T: Tensor,
    mask: Tensor | None = None,
    *,
    inputs: AttentionInputs = "scores",
) -> Tensor:
    """Return :func:`attention_ce_loss` of the head-averaged maps (heads averaged first if 4-D).

    :param attention_S: student attention (B, H, Lq, Lk) or (B, Lq, Lk).
    :param attention_T: teacher attention, (B, H_T, Lq, Lk): the head counts may differ (detached here).
    :param mask: (B, L) for square maps, or a (B, Lq, Lk) pair mask; 1 = keep; or None.
    :param inputs: ``"scores"`` or ``"probs"``.
    """
    attention_S, attention_T, pairs = _prepare(attention_S, attention_T, mask, heads_may_differ=True)
    if attention_S.ndim == 4:
        attention_S, attention_T = attention_S.mean(1), attention_T.mean(1)
        pairs = None if pairs is None else pairs.squeeze(1)
    return _ce(attention_S, attention_T, pairs, inputs)


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

    :param attention_S: student attention (B, H, Lq, Lk) or (B, Lq, Lk).
    :param attention_T: teacher attention, same shape (detached here).
    :param mask: (B, L) for square maps, or a (B, Lq, Lk) pair mask; 1 = keep; or None.
    :param inputs: ``"probs"`` or ``"scores"``.
    """
    attention_S, attention_T, pairs = _prepare(attention_S, attention_T, mask)
    if inputs == "scores":
        log_p_T = attention_T.log_softmax(-1)
        p_T, log_q = log_p_T.exp(), attention_S.log_softmax(-1)
    else:
        p_T, log_p_T, log_q = attention_T, _log_probs(attention_T), _log_probs(attention_S)
    return _mean_over_queries(xlogy_safe(zero_dropped(p_T, pairs), log_p_T - log_q), pairs)


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
