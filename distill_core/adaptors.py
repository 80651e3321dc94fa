"""The adaptor contract, its first-step check, and the automatic adaptor for Hugging Face outputs.

An adaptor is ``adaptor(batch, model_outputs) -> dict`` (it may also take a ``task`` argument in
multi-task runs). The dict's keys, all optional:

- ``logits``: a tensor (B, C) or (B, L, C), or a list of them (e.g. start and end logits).
- ``logits_mask``: (B, L), 1 = keep; for 3-D logits, the positions KD averages over.
- ``losses``: a scalar tensor or a list of them (hard-label losses, summed).
- ``hidden``: a list/tuple of (B, L, D) tensors, one per layer (Hugging Face's ``hidden_states``).
- ``attention``: a list/tuple of (B, H, L, L) tensors (``attentions``).
- ``inputs_mask``: (B, L), 1 = real token; masks the intermediate matches.
- ``labels``: class ids, used by ``probability_shift``.

Masks may be bool, integer or float 0/1 tensors.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from distill_core.errors import AdaptorError

ADAPTOR_KEYS = ("logits", "logits_mask", "losses", "hidden", "attention", "inputs_mask", "labels")
#: adaptor keys that hold per-layer features a match can read
FEATURE_KEYS = ("hidden", "attention")
Adaptor = Callable[..., Mapping[str, Any]]


def _shape(tensor: Any) -> str:
    return str(tuple(tensor.shape)) if isinstance(tensor, torch.Tensor) else type(tensor).__name__


def auto_adaptor(batch: Any, model_outputs: Any) -> dict[str, Any]:
    """Map a Hugging Face ``ModelOutput`` to the adaptor dict.

    ``logits`` (or ``start_logits``/``end_logits``), ``hidden_states``, ``attentions`` and ``loss``
    are taken when present; ``inputs_mask`` is the batch's ``attention_mask``.
    """
    if not isinstance(model_outputs, Mapping):
        raise AdaptorError(
            f"adaptor is None, but the model returned {type(model_outputs).__name__}, not a Hugging "
            f"Face ModelOutput; pass adaptor_T/adaptor_S functions returning a dict with keys "
            f"{', '.join(ADAPTOR_KEYS)}"
        )
    results: dict[str, Any] = {}
    if model_outputs.get("logits") is not None:
        results["logits"] = model_outputs["logits"]
    elif model_outputs.get("start_logits") is not None:
        results["logits"] = [model_outputs["start_logits"], model_outputs["end_logits"]]
    if model_outputs.get("hidden_states") is not None:
        results["hidden"] = model_outputs["hidden_states"]
    if model_outputs.get("attentions") is not None:
        results["attention"] = model_outputs["attentions"]
    if model_outputs.get("loss") is not None:
        results["losses"] = [model_outputs["loss"]]
    if isinstance(batch, Mapping) and batch.get("attention_mask") is not None:
        results["inputs_mask"] = batch["attention_mask"]
    return results


class BoundAdaptor:
    """An adaptor with its call convention (``task`` or not) decided once."""

    def __init__(self, adaptor: Adaptor | None, role: str) -> None:
        self.role = role
        self.function = auto_adaptor if adaptor is None else adaptor
        if not callable(self.function):
            raise TypeError(f"{role} must be a callable adaptor(batch, model_outputs) or None, got {adaptor!r}")
        try:
            parameters = inspect.signature(self.function).parameters
        except (TypeError, ValueError):
            parameters = {}
        self.takes_task = "task" in parameters

    def __call__(self, batch: Any, outputs: Any, task: str | None) -> Mapping[str, Any]:
        if self.takes_task:
            return self.function(batch, outputs, task=task)
        return self.function(batch, outputs)


def as_list(value: Any) -> list[Any]:
    """A tensor becomes a one-element list; lists and tuples become lists."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


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
            close = difflib.get_close_matches(str(key), ADAPTOR_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise AdaptorError(f"{role} returned unknown key {key!r}{hint} Allowed keys: {', '.join(ADAPTOR_KEYS)}")
    for key in ("logits", "losses", "hidden", "attention"):
        if key in results and results[key] is not None:
            items = as_list(results[key])
            for index, item in enumerate(items):
                if not isinstance(item, torch.Tensor):
                    raise AdaptorError(
                        f"{role}[{key!r}] must be a tensor or a list/tuple of tensors, but item {index} is "
                        f"{type(item).__name__}"
                    )
    for key in ("hidden", "attention"):
        if key in results and isinstance(results[key], torch.Tensor):
            raise AdaptorError(
                f"{role}[{key!r}] must be a list/tuple with one tensor per layer, got a single "
                f"tensor of shape {_shape(results[key])}; wrap it: [tensor]"
            )
    for key in ("losses",):
        for index, loss in enumerate(as_list(results.get(key))):
            if loss.dim() > 1:
                raise AdaptorError(
                    f"{role}['losses'][{index}] must be a scalar (or a vector averaged per device), "
                    f"got shape {_shape(loss)}"
                )
    for key in ("logits_mask", "inputs_mask", "labels"):
        if key in results and results[key] is not None and not isinstance(results[key], torch.Tensor):
            raise AdaptorError(f"{role}[{key!r}] must be a tensor, got {type(results[key]).__name__}")
    mask = results.get("inputs_mask")
    if mask is not None and mask.dim() != 2:
        raise AdaptorError(f"{role}['inputs_mask'] must be (batch, length), got shape {_shape(mask)}")
    logits_mask = results.get("logits_mask")
    if logits_mask is not None:
        for index, logits in enumerate(as_list(results.get("logits"))):
            if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(logits_mask.shape):
                raise AdaptorError(
                    f"{role}['logits_mask'] of shape {_shape(logits_mask)} must match the first two dimensions "
                    f"of 3-D logits (B, L, C), but logits {index} has shape {_shape(logits)}"
                )


def check_pair(results_S: Mapping[str, Any], results_T: Mapping[str, Any], role_T: str, needs_logits: bool) -> None:
    """Check that student and teacher logits pair up (same count and shapes)."""
    logits_S, logits_T = as_list(results_S.get("logits")), as_list(results_T.get("logits"))
    if needs_logits and (not logits_S or not logits_T):
        missing = "adaptor_S" if not logits_S else role_T
        raise AdaptorError(
            f"{missing} returned no 'logits', but kd_loss_weight > 0 needs them; return "
            f"{{'logits': outputs.logits, ...}} or set kd_loss_weight=0"
        )
    if len(logits_S) != len(logits_T):
        raise AdaptorError(f"adaptor_S returned {len(logits_S)} logits tensors but {role_T} returned {len(logits_T)}")
    for index, (student, teacher) in enumerate(zip(logits_S, logits_T)):
        if student.shape != teacher.shape:
            raise AdaptorError(
                f"logits {index}: student shape {_shape(student)} differs from teacher ({role_T}) shape "
                f"{_shape(teacher)}; KD needs the same classes in the same order"
            )


def select_layers(results: Mapping[str, Any], feature: str, layer: int | Sequence[int], role: str, match: str) -> Any:
    """Return ``results[feature][layer]`` (or a list of them), with an error naming the match."""
    layers = results.get(feature)
    if layers is None:
        raise AdaptorError(
            f"{match} needs {feature!r} from {role}, but it returned keys {sorted(results)}; return "
            f"{{'{feature}': outputs.{'hidden_states' if feature == 'hidden' else 'attentions'}, ...}} "
            f"(and call the model with output_{'hidden_states' if feature == 'hidden' else 'attentions'}=True)"
        )
    wanted = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    for index in wanted:
        if index >= len(layers):
            raise AdaptorError(
                f"{match}: layer {index} is out of range for {role}[{feature!r}], which has {len(layers)} layers "
                f"(valid indices 0..{len(layers) - 1})"
            )
    if isinstance(layer, (list, tuple)):
        return [layers[index] for index in wanted]
    return layers[layer]
