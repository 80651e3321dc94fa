"""Match losses between relations inside a model: ``gram`` (alias ``fsp``), ``mmd`` (alias ``nst``),
``relation_kl``.

These compare how features relate to each other rather than the features themselves, so some of
them allow student and teacher widths to differ. ``gram`` and ``mmd`` take two layers per model:
the match's ``layer_S`` / ``layer_T`` are lists of two indices and the features arrive as lists
``[X0, X1]``, each (B, L, D). The mask is the adaptor's ``inputs_mask`` (B, L), 1 = keep; ``n_b``
is the number of kept tokens of example b.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
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
    two_layers,
    upcast,
    xlogy_safe,
    zero_dropped,
)


class RelationKLParams(BaseModel):
    """Options of ``relation_kl``."""

    model_config = ConfigDict(extra="forbid")
    #: Number of relation heads the width is split into; must divide both widths.
    num_relation_heads: int = Field(1, ge=1)


def _layer_pair(features: Sequence[Tensor], side: str, loss: str) -> tuple[Tensor, Tensor]:
    """Return one side's two layers, upcast (and detached for the teacher), after shape checks."""
    layer_0, layer_1 = two_layers(features, side, loss)
    for layer in (layer_0, layer_1):
        check_ndim(layer, (3,), f"{side} layers of `{loss}`", "(B, L, D)")
    if layer_0.shape[:2] != layer_1.shape[:2]:
        raise ShapeMismatchError(
            f"Expected the two {side} layers of `{loss}` to share (B, L) but got "
            f"{shape_str(layer_0.shape)} and {shape_str(layer_1.shape)}"
        )
    if side == "teacher":
        layer_0, layer_1 = layer_0.detach(), layer_1.detach()
    return upcast(layer_0), upcast(layer_1)


def gram_loss(features_S: Sequence[Tensor], features_T: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
    """Return the mean squared error between the flow-of-solution (Gram) matrices of two layers.

    ``G = X0ᵀ X1 / L`` (B, D0, D1) for each model, loss ``mean((G_S − G_T)²)`` over all entries.
    With a mask, padded rows of X0 and X1 are zeroed and the divisor of example b is ``n_b``
    instead of L (an example with no kept token gives G = 0). Yim et al., 2017, "A Gift from
    Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning" (FSP).

    :param features_S: student layers ``[X0, X1]``, each (B, L, D), projected to teacher widths.
    :param features_T: teacher layers ``[X0, X1]``, same shapes as the student's (detached here).
    :param mask: (B, L), 1 = keep, or None.
    """
    return _gram_loss(features_S, features_T, mask, loss="gram")


def _gram_loss(features_S: Sequence[Tensor], features_T: Sequence[Tensor], mask: Tensor | None, *, loss: str) -> Tensor:
    S_0, S_1 = _layer_pair(features_S, "student", loss)
    T_0, T_1 = _layer_pair(features_T, "teacher", loss)
    check_same_shape(S_0, T_0, f"first layers of `{loss}`")
    check_same_shape(S_1, T_1, f"second layers of `{loss}`")
    keep = keep_mask(mask, S_0.shape[:2], "layers", S_0.shape)

    def gram(layer_0: Tensor, layer_1: Tensor) -> Tensor:
        layer_0, layer_1 = zero_dropped(layer_0, keep), zero_dropped(layer_1, keep)
        products = layer_0.transpose(1, 2) @ layer_1
        if keep is None:
            return products / layer_0.shape[1]
        return safe_div(products, keep.sum(1).to(products.dtype).view(-1, 1, 1))

    return F.mse_loss(gram(S_0, S_1), gram(T_0, T_1))


def mmd_loss(features_S: Sequence[Tensor], features_T: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
    """Return the mean squared error between token-similarity matrices of two layers.

    ``G = X0 X1ᵀ / D`` (B, L, L) for each model, so student and teacher widths may differ. No mask:
    ``mean((G_S − G_T)²)``. Mask: ``Σ_{b,i,j} (G_S − G_T)² m_i m_j / Σ_b n_b²``. Huang and Wang,
    2017, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (NST).

    :param features_S: student layers ``[X0, X1]``, both (B, L, D_S).
    :param features_T: teacher layers ``[X0, X1]``, both (B, L, D_T) (detached here).
    :param mask: (B, L), 1 = keep, or None.
    """
    return _mmd_loss(features_S, features_T, mask, loss="mmd")


def _mmd_loss(features_S: Sequence[Tensor], features_T: Sequence[Tensor], mask: Tensor | None, *, loss: str) -> Tensor:
    S_0, S_1 = _layer_pair(features_S, "student", loss)
    T_0, T_1 = _layer_pair(features_T, "teacher", loss)
    check_same_shape(S_0, S_1, f"student layers of `{loss}` (X0 and X1)")
    check_same_shape(T_0, T_1, f"teacher layers of `{loss}` (X0 and X1)")
    if S_0.shape[:2] != T_0.shape[:2]:
        raise ShapeMismatchError(
            f"Expected student and teacher layers of `{loss}` to share (B, L) but got student "
            f"{shape_str(S_0.shape)} and teacher {shape_str(T_0.shape)}"
        )
    keep = keep_mask(mask, S_0.shape[:2], "layers", S_0.shape)
    T_0, T_1 = zero_dropped(T_0, keep), zero_dropped(T_1, keep)  # no NaN from padding in the gradient either
    gram_S = S_0 @ S_1.transpose(1, 2) / S_0.shape[-1]
    gram_T = T_0 @ T_1.transpose(1, 2) / T_0.shape[-1]
    squared_error = (gram_S - gram_T).square()
    return masked_mean(squared_error, None if keep is None else pair_mask(keep, 3))


def _relation_log_probs(feature: Tensor, heads: int, keep: Tensor | None) -> Tensor:
    """Return log softmax over keys of ``X_h X_hᵀ / √d_r`` per relation head, (B, heads, L, L)."""
    batch, length, width = feature.shape
    head_width = width // heads
    per_head = feature.reshape(batch, length, heads, head_width).transpose(1, 2)
    scores = per_head @ per_head.transpose(-1, -2) / math.sqrt(head_width)
    if keep is not None:
        # The most negative finite value, not -inf: a fully padded row then stays finite (uniform)
        # and cannot put NaN into the backward pass; it is excluded from the mean anyway.
        scores = scores.masked_fill(~keep[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.log_softmax(-1)


def relation_kl_loss(
    feature_S: Tensor,
    feature_T: Tensor,
    mask: Tensor | None = None,
    *,
    num_relation_heads: int = 1,
) -> Tensor:
    """Return the self-attention relation distillation loss of MiniLMv2.

    Each feature (B, L, D) is split along D into ``r = num_relation_heads`` heads of width
    ``d_r = D / r``; the relation is ``R = softmax(X_h X_hᵀ / √d_r)`` over keys, with padded keys
    excluded from the softmax. The loss is ``KL(R_T ‖ R_S)`` summed over keys and averaged over
    heads and kept queries. Only B and L must agree: student and teacher widths may differ, but
    ``r`` must divide both. Wang et al., 2021, "MiniLMv2: Multi-Head Self-Attention Relation
    Distillation for Compressing Pretrained Transformers".

    :param feature_S: student feature (B, L, D_S), e.g. queries, keys or values of a layer.
    :param feature_T: teacher feature (B, L, D_T) (detached here).
    :param mask: (B, L), 1 = keep, or None.
    :param num_relation_heads: number of relation heads ``r``.
    """
    check_ndim(feature_S, (3,), "student features of `relation_kl`", "(B, L, D)")
    check_ndim(feature_T, (3,), "teacher features of `relation_kl`", "(B, L, D)")
    if feature_S.shape[:2] != feature_T.shape[:2]:
        raise ShapeMismatchError(
            f"Expected student and teacher features of `relation_kl` to share (B, L) but got "
            f"student {shape_str(feature_S.shape)} and teacher {shape_str(feature_T.shape)}"
        )
    if num_relation_heads < 1:
        raise ValueError(f"Expected argument `num_relation_heads` to be positive but got {num_relation_heads}")
    for side, feature in (("student", feature_S), ("teacher", feature_T)):
        if feature.shape[-1] % num_relation_heads:
            raise ValueError(
                f"Expected `num_relation_heads` to divide the {side} width but got "
                f"num_relation_heads={num_relation_heads} and {side} width {feature.shape[-1]}; "
                f"choose a common divisor of both widths"
            )
    keep = keep_mask(mask, feature_S.shape[:2], "features", feature_S.shape)
    feature_S, feature_T = upcast(feature_S), zero_dropped(upcast(feature_T.detach()), keep)
    log_R_S = _relation_log_probs(feature_S, num_relation_heads, keep)
    log_R_T = _relation_log_probs(feature_T, num_relation_heads, keep)
    terms = xlogy_safe(log_R_T.exp(), log_R_T - log_R_S)
    if keep is None:
        return terms.sum(-1).mean()
    kept_terms = torch.where(pair_mask(keep, 4), terms, torch.zeros_like(terms))
    return safe_div(kept_terms.sum(), keep.sum().to(terms.dtype) * num_relation_heads)


_GRAM_SUMMARY = "Mean squared error between Gram (FSP) matrices of two layers"
_MMD_SUMMARY = "Mean squared error between token-similarity matrices of two layers (NST)"


@hookimpl
def declare_components() -> list[ComponentInfo]:
    """Declare the relation match losses of this module."""
    return [
        ComponentInfo(kind="match_loss", name="gram", params=None, summary=_GRAM_SUMMARY, aliases=("fsp",)),
        ComponentInfo(kind="match_loss", name="mmd", params=None, summary=_MMD_SUMMARY, aliases=("nst",)),
        ComponentInfo(
            kind="match_loss",
            name="relation_kl",
            params=RelationKLParams,
            summary="KL divergence between self-attention relations (MiniLMv2)",
        ),
    ]


@hookimpl
def compute_match_loss(
    name: str,
    feature_S: Tensor | Sequence[Tensor],
    feature_T: Tensor | Sequence[Tensor],
    mask: Tensor | None,
    params: BaseModel | None,
) -> Tensor | None:
    """Return the match loss ``name`` if this module provides it, else None."""
    if name in ("gram", "fsp"):
        return _gram_loss(feature_S, feature_T, mask, loss=name)  # type: ignore[arg-type]
    if name in ("mmd", "nst"):
        return _mmd_loss(feature_S, feature_T, mask, loss=name)  # type: ignore[arg-type]
    if name == "relation_kl":
        options = resolve_params(RelationKLParams, params)
        return relation_kl_loss(
            single_layer(feature_S, "student", name),
            single_layer(feature_T, "teacher", name),
            mask,
            num_relation_heads=options.num_relation_heads,
        )
    return None


__all__ = [
    "RelationKLParams",
    "compute_match_loss",
    "declare_components",
    "gram_loss",
    "mmd_loss",
    "relation_kl_loss",
]
