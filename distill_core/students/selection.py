"""Which layers, heads, key/value groups and channels a student keeps: the rules, as plain functions.

Every kept set is returned in the teacher's order, so a plan that keeps everything is the teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from distill_core.layer_mapping import student_init_layers

__all__ = ["LAYER_METHODS", "LayerMethod", "first_last_layers", "select_heads", "select_layers", "top_indices"]

LayerMethod = Literal["block_influence", "first_last", "uniform", "explicit"]
LAYER_METHODS: tuple[str, ...] = ("block_influence", "first_last", "uniform", "explicit")


def top_indices(scores: torch.Tensor | Sequence[float], keep: int) -> list[int]:
    """Return the indices of the ``keep`` highest scores, in ascending index order (ties: the lower index).

    >>> top_indices([0.1, 0.9, 0.5, 0.7], 2)
    [1, 3]
    """
    values = torch.as_tensor(scores, dtype=torch.float64)
    if not 1 <= keep <= values.numel():
        raise ValueError(f"Expected to keep between 1 and {values.numel()} but got {keep}")
    # a stable sort of the negated scores keeps the lower index first among equal scores
    order = torch.sort(-values, stable=True).indices[:keep]
    return sorted(order.tolist())


def first_last_layers(num_layers: int, keep: int) -> list[int]:
    """Return the first ``keep // 2`` and the last ``keep - keep // 2`` layers: 30 -> 6 gives [0, 1, 2, 27, 28, 29]."""
    if not 1 <= keep <= num_layers:
        raise ValueError(f"Expected to keep between 1 and {num_layers} layers but got {keep}")
    first = keep // 2
    return list(range(first)) + list(range(num_layers - (keep - first), num_layers))


def select_layers(num_layers: int, *, method: str, keep: int | None = None,
                  block_influence: Sequence[float] | None = None,
                  explicit: Sequence[int] | None = None) -> list[int]:
    """Return the teacher layers (0-based, ascending) a student keeps.

    :param method: ``block_influence`` (the ``keep`` layers of highest block influence),
        ``first_last`` (:func:`first_last_layers`), ``uniform`` (the last layer of each of ``keep``
        equal blocks, :func:`distill_core.layer_mapping.student_init_layers`) or ``explicit``.
    :param explicit: the layers for ``explicit``.
    """
    if method not in LAYER_METHODS:
        raise ValueError(f"Expected argument `method` to be one of {', '.join(LAYER_METHODS)} but got {method!r}")
    if method == "explicit":
        if not explicit:
            raise ValueError("method 'explicit' needs the layers to keep (e.g. --keep 0,1,5)")
        layers = sorted(set(int(index) for index in explicit))
        bad = [index for index in layers if not 0 <= index < num_layers]
        if bad or len(layers) != len(explicit):
            raise ValueError(f"Expected distinct layer indices in 0..{num_layers - 1} but got {list(explicit)}")
        if keep is not None and keep != len(layers):
            raise ValueError(f"--layers {keep} disagrees with the {len(layers)} explicit layers {layers}")
        return layers
    if keep is None:
        raise ValueError(f"method {method!r} needs the number of layers to keep")
    if method == "first_last":
        return first_last_layers(num_layers, keep)
    if method == "uniform":
        return student_init_layers(num_layers, keep)
    if block_influence is None or len(block_influence) != num_layers:
        raise ValueError("method 'block_influence' needs one calibrated score per layer (calibrate first)")
    return top_indices(block_influence, keep)


def select_heads(scores: torch.Tensor, *, num_kv_heads: int, keep_heads: int,
                 keep_kv_heads: int) -> tuple[list[int], list[int]]:
    """Return the query heads and key/value groups one layer keeps, ranked by ``scores`` (one per query head).

    With grouped-query attention each key/value head serves ``heads / kv_heads`` consecutive query
    heads, and every group of the student must serve the same number. So the groups are ranked by
    the summed scores of their query heads and the best ``keep_kv_heads`` kept; within each kept
    group, its best ``keep_heads / keep_kv_heads`` query heads. Without GQA (one query head per
    group) this is simply the best ``keep_heads`` heads.
    """
    num_heads = scores.numel()
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} heads cannot be split into {num_kv_heads} key/value groups")
    if not 1 <= keep_kv_heads <= num_kv_heads:
        raise ValueError(f"Expected to keep between 1 and {num_kv_heads} key/value heads but got {keep_kv_heads}")
    if keep_heads % keep_kv_heads:
        raise ValueError(f"Expected the kept heads ({keep_heads}) to be a multiple of the kept key/value heads "
                         f"({keep_kv_heads}): every group serves the same number of query heads")
    group_size = num_heads // num_kv_heads
    per_group = keep_heads // keep_kv_heads
    if per_group > group_size:
        raise ValueError(f"each of {keep_kv_heads} key/value groups can serve at most {group_size} query heads; "
                         f"{keep_heads} heads need {per_group} each")
    grouped = scores.reshape(num_kv_heads, group_size)
    groups = top_indices(grouped.sum(dim=1), keep_kv_heads)
    heads = [group * group_size + offset for group in groups for offset in top_indices(grouped[group], per_group)]
    return heads, groups
