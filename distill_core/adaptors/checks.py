"""First-step checks of adaptor outputs: each dict on its own, then student and teacher as a pair.

distill calls these once, on the first step (and the first step of each task in a multi-task run),
so that a wrong key, type or shape stops the run with an error that names the adaptor, the key and
the fix, instead of a shape error deep inside a loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from distill_core.adaptors.contract import (
    ADAPTOR_KEYS,
    ATTENTION_FEATURES,
    FEATURE_KEYS,
    HIDDEN_FEATURES,
    as_list,
)
from distill_core.adaptors.logits import LogitsView, logits_view
from distill_core.errors import AdaptorError, did_you_mean


def _shape(tensor: Any) -> str:
    return str(tuple(tensor.shape)) if isinstance(tensor, torch.Tensor) else type(tensor).__name__


def check_adaptor_output(results: Any, role: str) -> None:
    """Check one adaptor's dict on the first step: keys, types and mask shapes.

    :param role: ``"adaptor_S"``, ``"adaptor_T"`` or ``"adaptor_T[1]"``..., named in messages.
    :raises AdaptorError: naming the key, what was expected and what came.
    """
    if not isinstance(results, Mapping):
        raise AdaptorError(
            f"{role} must return a dict with keys among {', '.join(ADAPTOR_KEYS)}, got {type(results).__name__}"
        )
    for key in results:
        if key not in ADAPTOR_KEYS:
            raise AdaptorError(
                f"{role} returned unknown key {key!r}{did_you_mean(key, ADAPTOR_KEYS)} "
                f"Allowed keys: {', '.join(ADAPTOR_KEYS)}"
            )
    for key in ("logits", "losses", *FEATURE_KEYS):
        if key in results and results[key] is not None:
            for index, item in enumerate(as_list(results[key])):
                if not isinstance(item, torch.Tensor):
                    raise AdaptorError(
                        f"{role}[{key!r}] must be a tensor or a list/tuple of tensors, but item {index} is "
                        f"{type(item).__name__}"
                    )
    for key in FEATURE_KEYS:
        if key in results and isinstance(results[key], torch.Tensor):
            raise AdaptorError(
                f"{role}[{key!r}] must be a list/tuple with one tensor per layer, got a single "
                f"tensor of shape {_shape(results[key])}; wrap it: [tensor]"
            )
    for index, loss in enumerate(as_list(results.get("losses"))):
        if loss.dim() > 1:
            raise AdaptorError(
                f"{role}['losses'][{index}] must be a scalar (or a vector averaged per device), "
                f"got shape {_shape(loss)}"
            )
    for key in ("logits_mask", "inputs_mask", "labels", "logits_hidden"):
        if key in results and results[key] is not None and not isinstance(results[key], torch.Tensor):
            raise AdaptorError(f"{role}[{key!r}] must be a tensor, got {type(results[key]).__name__}")
    mask = results.get("inputs_mask")
    if mask is not None and mask.dim() != 2:
        raise AdaptorError(f"{role}['inputs_mask'] must be (batch, length), got shape {_shape(mask)}")
    _check_masks(results, role)
    _check_chunked(results, role)
    logits_mask = results.get("logits_mask")
    if logits_mask is not None:
        for index, logits in enumerate(as_list(results.get("logits"))):
            if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(logits_mask.shape):
                raise AdaptorError(
                    f"{role}['logits_mask'] of shape {_shape(logits_mask)} must match the first two dimensions "
                    f"of 3-D logits (B, L, C), but logits {index} has shape {_shape(logits)}"
                )


def _expected_mask_shape(feature: str, mask: torch.Tensor, layer: torch.Tensor) -> tuple[int, ...] | None:
    """The mask shape that fits ``layer`` (one layer of ``feature``), or None if the layer's rank is unusual."""
    if feature in HIDDEN_FEATURES:
        return tuple(layer.shape[:2]) if layer.dim() == 3 else None
    if layer.dim() not in (3, 4):  # (B, H, Lq, Lk) or heads already reduced (B, Lq, Lk)
        return None
    batch, queries, keys = layer.shape[0], layer.shape[-2], layer.shape[-1]
    if mask.dim() == 3:
        return (batch, queries, keys)
    return (batch, queries) if queries == keys else (batch, queries, keys)


def _check_masks(results: Mapping[str, Any], role: str) -> None:
    masks = results.get("masks")
    if masks is None:
        return
    if not isinstance(masks, Mapping):
        raise AdaptorError(
            f"{role}['masks'] must be a dict {{feature name: mask}}, e.g. "
            f"{{'decoder_hidden': batch['decoder_attention_mask']}}, got {type(masks).__name__}"
        )
    for feature, mask in masks.items():
        if feature not in FEATURE_KEYS:
            raise AdaptorError(
                f"{role}['masks'] has key {feature!r}{did_you_mean(feature, FEATURE_KEYS)} Its keys must be "
                f"feature names: {', '.join(FEATURE_KEYS)}"
            )
        where = f"{role}['masks'][{feature!r}]"
        if not isinstance(mask, torch.Tensor):
            raise AdaptorError(f"{where} must be a tensor, got {type(mask).__name__}")
        if feature == "cross_attention":
            layouts = {3: "(B, L_dec, L_enc): decoder mask ⊗ encoder mask, e.g. dec[:, :, None] & enc[:, None, :]"}
        elif feature in ATTENTION_FEATURES:
            layouts = {2: "(B, L)", 3: "(B, L, L)"}
        else:
            layouts = {2: "(B, L)"}
        if mask.dim() not in layouts:
            raise AdaptorError(f"{where} must be {' or '.join(layouts.values())}, got shape {_shape(mask)}")
        layers = as_list(results.get(feature))
        if not layers:
            continue
        expected = _expected_mask_shape(feature, mask, layers[0])
        if expected is not None and tuple(mask.shape) != expected:
            raise AdaptorError(
                f"{where} of shape {_shape(mask)} does not fit {role}[{feature!r}][0] of shape {_shape(layers[0])}: "
                f"expected {expected}; build it from the mask of the sequence that feature runs over"
            )


def _check_chunked(results: Mapping[str, Any], role: str) -> None:
    hidden, head = results.get("logits_hidden"), results.get("logits_head")
    if hidden is None and head is None:
        return
    if hidden is None or head is None:
        given, missing = ("logits_hidden", "logits_head") if head is None else ("logits_head", "logits_hidden")
        raise AdaptorError(
            f"{role} returned {given!r} without {missing!r}; chunked token KD needs both: the final hidden "
            f"states (B, L, D) and the output head (model.get_output_embeddings())"
        )
    if hidden.dim() != 3:
        raise AdaptorError(
            f"{role}['logits_hidden'] must be the final hidden states (B, L, D), got shape {_shape(hidden)}"
        )
    weight = getattr(head, "weight", None)
    if not isinstance(head, nn.Module) or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise AdaptorError(
            f"{role}['logits_head'] must be the output head, an nn.Module with a 2-D weight (V, D) such as "
            f"model.get_output_embeddings(), got {type(head).__name__}"
            + ("" if not isinstance(weight, torch.Tensor) else f" with weight of shape {_shape(weight)}")
        )
    if weight.shape[1] != hidden.shape[-1]:
        raise AdaptorError(
            f"{role}['logits_head'] has weight of shape {_shape(weight)} (V, D), which does not fit "
            f"'logits_hidden' of width {hidden.shape[-1]} (shape {_shape(hidden)}); return the hidden states "
            f"that enter this head (after the final norm)"
        )
    logits_mask = results.get("logits_mask")
    if logits_mask is not None and tuple(logits_mask.shape) != tuple(hidden.shape[:2]):
        raise AdaptorError(
            f"{role}['logits_mask'] of shape {_shape(logits_mask)} must match the first two dimensions of "
            f"'logits_hidden' (B, L, D) of shape {_shape(hidden)}"
        )


def _kd_view(results: Any) -> LogitsView:
    """Adapted outputs, or a teacher's logits view, as a view (the KD term's reading of them)."""
    return results if isinstance(results, LogitsView) else logits_view(results)


def check_pair(
    results_S: Any,
    results_T: Any,
    role_T: str,
    needs_logits: bool,
    *,
    vocab_size: int | None = None,
) -> None:
    """Check that student and teacher KD outputs pair up: same count, rows and classes.

    Dense logits must have equal shapes. When either side is chunked (``logits_hidden`` with
    ``logits_head``), the hidden widths may differ; the rows (B, L) and the vocabulary sizes (the
    heads' output counts) must match. With ``vocab_size=N`` (a padded vocabulary) both sides need
    at least N outputs and only the first N are compared. Either side may be adapted outputs or a
    :class:`~distill_core.adaptors.logits.LogitsView` (a teacher's logits, e.g. stored rows).
    """
    view_S, view_T = _kd_view(results_S), _kd_view(results_T)
    outputs_S, outputs_T = view_S.describe(), view_T.describe()
    if needs_logits and (not outputs_S or not outputs_T):
        missing = "adaptor_S" if not outputs_S else role_T
        raise AdaptorError(
            f"{missing} returned no 'logits', but kd_loss_weight > 0 needs them; return "
            f"{{'logits': outputs.logits, ...}} (or 'logits_hidden' and 'logits_head' for chunked token KD) "
            f"or set kd_loss_weight=0"
        )
    if len(outputs_S) != len(outputs_T):
        raise AdaptorError(f"adaptor_S returned {len(outputs_S)} logits tensors but {role_T} returned {len(outputs_T)}")
    chunked = view_S.kind != "logits" or view_T.kind != "logits"
    if not chunked and vocab_size is None:
        pairs = zip(view_S.dense(), view_T.dense())
        for index, (student, teacher) in enumerate(pairs):
            if student.shape != teacher.shape:
                raise AdaptorError(
                    f"logits {index}: student shape {_shape(student)} differs from teacher ({role_T}) shape "
                    f"{_shape(teacher)}; KD needs the same classes in the same order"
                )
        return
    for index, ((what_S, rows_S, size_S), (what_T, rows_T, size_T)) in enumerate(zip(outputs_S, outputs_T)):
        if rows_S != rows_T:
            raise AdaptorError(
                f"logits {index}: the student's positions {rows_S} ({what_S}) differ from the teacher's "
                f"({role_T}) {rows_T} ({what_T}); both models must see the same batch"
            )
        if vocab_size is None and size_S != size_T:
            raise AdaptorError(
                f"logits {index}: the student has {size_S} outputs ({what_S}) but the teacher ({role_T}) has "
                f"{size_T} ({what_T}); KD needs the same vocabulary in the same order (for a padded vocabulary, "
                f"compare only the shared first N entries with DistillationConfig.kd_vocab_size=N)"
            )
        if vocab_size is not None and min(size_S, size_T) < vocab_size:
            side, size = ("student", size_S) if size_S < vocab_size else (f"teacher ({role_T})", size_T)
            raise AdaptorError(
                f"logits {index}: vocab_size={vocab_size} but the {side} has only {size} outputs; vocab_size "
                f"can be at most {min(size_S, size_T)}"
            )

