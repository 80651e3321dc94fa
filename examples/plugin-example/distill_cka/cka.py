"""Linear CKA (Kornblith et al., 2019, "Similarity of Neural Network Representations Revisited").

For token features X (n, d_S) and Y (n, d_T), centred over the n valid tokens::

    CKA(X, Y) = ‖Yᵀ X‖_F² / (‖Xᵀ X‖_F · ‖Yᵀ Y‖_F)

and the loss is ``1 − CKA`` (0 when the representations agree up to rotation and scale). Student and
teacher widths may differ, so no projection is needed. With ``per_example=True`` the CKA is computed
for each example over its own tokens and averaged; otherwise over all tokens of the batch.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from distill_core import ComponentInfo, ShapeMismatchError, hookimpl

NAME = "cka"


class CKAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_example: bool = False
    eps: float = Field(1e-8, gt=0)


def _centred(x: torch.Tensor, weights: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    count = weights.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (x * weights).sum(dim=dims, keepdim=True) / count
    return (x - mean) * weights


def linear_cka_loss(
    feature_S: torch.Tensor,
    feature_T: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    per_example: bool = False,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Return ``1 − linear CKA`` between (B, L, D_S) and (B, L, D_T) features over valid tokens."""
    if feature_S.dim() != 3 or feature_T.dim() != 3 or feature_S.shape[:2] != feature_T.shape[:2]:
        raise ShapeMismatchError(
            f"cka expects student (B, L, D_S) and teacher (B, L, D_T) with the same B and L, got "
            f"student {tuple(feature_S.shape)} and teacher {tuple(feature_T.shape)}"
        )
    x = feature_S.float()
    y = feature_T.detach().float()
    if mask is None:
        weights = torch.ones(x.shape[:2] + (1,), dtype=x.dtype, device=x.device)
    else:
        weights = mask.to(dtype=x.dtype).unsqueeze(-1)
    if per_example:
        x, y = _centred(x, weights, (1,)), _centred(y, weights, (1,))
        cross = torch.linalg.matrix_norm(y.transpose(1, 2) @ x) ** 2
        norm_x = torch.linalg.matrix_norm(x.transpose(1, 2) @ x)
        norm_y = torch.linalg.matrix_norm(y.transpose(1, 2) @ y)
        return (1 - cross / (norm_x * norm_y + eps)).mean()
    x = _centred(x.flatten(0, 1), weights.flatten(0, 1), (0,))
    y = _centred(y.flatten(0, 1), weights.flatten(0, 1), (0,))
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    return 1 - cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y) + eps)


@hookimpl
def declare_components() -> list[ComponentInfo]:
    return [
        ComponentInfo(
            kind="match_loss",
            name=NAME,
            params=CKAParams,
            summary="1 - linear CKA between hidden states (widths may differ)",
        )
    ]


@hookimpl
def compute_match_loss(name, feature_S, feature_T, mask, params):
    if name != NAME:
        return None
    return linear_cka_loss(feature_S, feature_T, mask, per_example=params.per_example, eps=params.eps)
