"""Match losses between hidden states: ``hidden_mse``, ``cos``, ``pkd``.

Features are (B, L, D) (``pkd`` also takes pooled (B, D)); the student feature arrives already
projected to the teacher width, so both shapes must be equal. The mask is the adaptor's
``inputs_mask`` (B, L), 1 = keep.
"""

from __future__ import annotations

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
    single_layer,
    student_teacher,
    zero_dropped,
)


def hidden_mse_loss(feature_S: Tensor, feature_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """Return the mean squared error between hidden states, over valid tokens only.

    No mask: ``mean((S − T)²)``. Mask: ``Σ_{b,i,d} m_bi · (S − T)²_bid / (Σ m · D)``. Romero et
    al., 2015, "FitNets: Hints for Thin Deep Nets"; Jiao et al., 2020, "TinyBERT".

    :param feature_S: student hidden states (B, L, D), already projected to the teacher width.
    :param feature_T: teacher hidden states, same shape (detached here).
    :param mask: (B, L), 1 = keep (must match ``feature.shape[:-1]``), or None.
    """
    check_same_shape(feature_S, feature_T, "hidden states")
    feature_S, feature_T = student_teacher(feature_S, feature_T)
    keep = keep_mask(mask, feature_S.shape[:-1], "features", feature_S.shape)
    return kept_squared_error_mean(feature_S, feature_T, keep)


def cos_loss(feature_S: Tensor, feature_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """Return the mean over valid tokens of ``1 − cos(S, T)``, the cosine taken along D.

    Sanh et al., 2019, "DistilBERT, a distilled version of BERT" (cosine embedding loss).

    :param feature_S: student hidden states (B, L, D), already projected to the teacher width.
    :param feature_T: teacher hidden states, same shape (detached here).
    :param mask: (B, L), 1 = keep (must match ``feature.shape[:-1]``), or None.
    """
    check_same_shape(feature_S, feature_T, "hidden states")
    feature_S, feature_T = student_teacher(feature_S, feature_T)
    keep = keep_mask(mask, feature_S.shape[:-1], "features", feature_S.shape)
    feature_S, feature_T = zero_dropped(feature_S, keep), zero_dropped(feature_T, keep)
    token_loss = 1 - F.cosine_similarity(feature_S, feature_T, dim=-1)
    return masked_mean(token_loss, keep)


def pkd_loss(feature_S: Tensor, feature_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """Return the patient-KD loss ``mean_b ‖S_b/‖S_b‖ − T_b/‖T_b‖‖²`` on the first-token state.

    (B, L, D) features use position 0 (the [CLS] token); (B, D) features are used as they are.
    The squared L2 norm is summed over D and averaged over the batch. With a mask, the mean runs
    over the examples whose position 0 is kept, ``mask[:, 0] == 1`` (every real example; a fully
    padded one is left out, and an all-zero mask gives 0). Sun et al., 2019, "Patient Knowledge
    Distillation for BERT Model Compression".

    :param feature_S: student states (B, L, D) or (B, D), already projected to the teacher width.
    :param feature_T: teacher states, same shape (detached here).
    :param mask: (B, L), 1 = keep, or None.
    """
    check_same_shape(feature_S, feature_T, "hidden states")
    check_ndim(feature_S, (2, 3), "pkd features", "(B, L, D) or (B, D)")
    if mask is not None and (
        mask.ndim != 2
        or mask.shape[0] != feature_S.shape[0]
        or mask.shape[1] < 1
        or (feature_S.ndim == 3 and mask.shape[1] != feature_S.shape[1])
    ):
        raise ShapeMismatchError(
            f"Expected `mask` of shape (B, L) to fit features of shape "
            f"{shape_str(feature_S.shape)} but got a mask of shape {shape_str(mask.shape)}"
        )
    feature_S, feature_T = student_teacher(feature_S, feature_T)
    if feature_S.ndim == 3:
        feature_S, feature_T = feature_S[:, 0], feature_T[:, 0]
    keep = None if mask is None else keep_mask(mask[:, 0], mask.shape[:1], "the first position")
    feature_S, feature_T = zero_dropped(feature_S, keep), zero_dropped(feature_T, keep)
    difference = F.normalize(feature_S, dim=-1) - F.normalize(feature_T, dim=-1)
    return masked_mean(difference.square().sum(-1), keep)


MatchLossFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]

_MATCH_LOSSES: dict[str, tuple[MatchLossFn, str]] = {
    "hidden_mse": (hidden_mse_loss, "Mean squared error between hidden states over valid tokens"),
    "cos": (cos_loss, "Mean of 1 - cosine similarity between hidden states over valid tokens"),
    "pkd": (pkd_loss, "Patient-KD distance between normalized first-token states"),
}


@hookimpl
def declare_components() -> list[ComponentInfo]:
    """Declare the hidden-state match losses of this module (none takes options)."""
    return [
        ComponentInfo(kind="match_loss", name=name, params=None, summary=summary)
        for name, (_, summary) in _MATCH_LOSSES.items()
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
    entry = _MATCH_LOSSES.get(name)
    if entry is None:
        return None
    return entry[0](single_layer(feature_S, "student", name), single_layer(feature_T, "teacher", name), mask)


__all__ = ["compute_match_loss", "cos_loss", "declare_components", "hidden_mse_loss", "pkd_loss"]
