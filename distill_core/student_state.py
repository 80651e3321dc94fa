"""What the checkpoints hold of the student: its whole ``state_dict``, or, for a peft model, what trains.

A student wrapped by peft (``get_peft_model(base, LoraConfig(...))``) trains its adapter and leaves
the base frozen; the base comes back from the model the user builds again for a resume or for
deployment. So for such a student:

- the full state's ``student`` holds the entries of its ``state_dict`` that can change in
  training (:func:`trained_names`: parameters with ``requires_grad``, and persistent buffers),
  under their names in the model, and ``student_peft`` holds :func:`peft_metadata` (adapter name,
  peft type and config, the frozen entries' names and shapes) for the compatibility check;
- ``gs{step}.pkl`` and ``best.pkl`` hold :func:`student_file`: the adapter in peft's own format
  (``get_peft_model_state_dict``, loaded with ``set_peft_model_state_dict``) with that metadata.

Every other student is saved whole, as before. A model is a peft model only if peft, already
loaded by whoever built it, says so: distill imports peft for nothing else.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from torch import nn

__all__ = [
    "PEFT_FORMAT",
    "PEFT_FORMAT_VERSION",
    "metadata_differences",
    "peft_adapter_name",
    "peft_metadata",
    "student_file",
    "trained_names",
]

#: the ``format`` of a peft student's ``gs*.pkl`` / ``best.pkl``
PEFT_FORMAT = "distill-peft-student"
PEFT_FORMAT_VERSION = 1
#: config fields that name where the base came from or which peft wrote it, not what trains
_CONFIG_FIELDS_NOT_COMPARED = ("base_model_name_or_path", "revision", "peft_version")


def peft_adapter_name(model: nn.Module) -> str | None:
    """Return the active adapter's name when ``model`` is a peft ``PeftModel``, else None."""
    peft = sys.modules.get("peft")
    if peft is None or not isinstance(model, getattr(peft, "PeftModel", ())):
        return None
    name = model.active_adapter
    return name if isinstance(name, str) else None


def trained_names(model: nn.Module) -> set[str]:
    """Return the ``state_dict`` names of what can change in training: trainable parameters and persistent buffers.

    Tied parameters count under every name the ``state_dict`` gives them.
    """
    names = {name for name, parameter in model.named_parameters(remove_duplicate=False) if parameter.requires_grad}
    state_names = set(model.state_dict(keep_vars=True))
    buffers = {name for name, _ in model.named_buffers(remove_duplicate=False)}
    return (names | buffers) & state_names  # non-persistent buffers are not in the state_dict


def _plain(value: Any) -> Any:
    """JSON for what a peft config holds besides plain data (sets of module names, enums)."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def peft_metadata(model: nn.Module, *, frozen: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return what a peft student's saved weights belong to (plain data, loadable with ``weights_only``).

    ``adapter_name``, ``peft_type`` (``"LORA"``), ``peft_config`` (the adapter's config as
    ``PeftConfig.to_dict()`` gives it, JSON-safe: what peft's ``adapter_config.json`` holds),
    ``base_model_class`` and, with ``frozen`` (a ``state_dict`` of the entries not saved),
    ``frozen`` as ``{name: shape}``.
    """
    adapter = peft_adapter_name(model)
    if adapter is None:
        raise TypeError(f"Expected argument `model` to be a peft PeftModel but got {type(model).__name__}")
    config = model.peft_config[adapter]
    metadata = {
        "adapter_name": adapter,
        "peft_type": str(getattr(config.peft_type, "value", config.peft_type)),
        "peft_config": json.loads(json.dumps(config.to_dict(), default=_plain)),
        "base_model_class": type(model.get_base_model()).__name__,
    }
    if frozen is not None:
        metadata["frozen"] = {name: list(tensor.shape) for name, tensor in frozen.items()}
    return metadata


def student_file(model: nn.Module, trained: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Return the content of a peft student's ``gs*.pkl`` / ``best.pkl`` from its ``trained`` entries.

    ``state_dict`` is peft's adapter format (``get_peft_model_state_dict``: the adapter name taken
    out of the keys), what ``set_peft_model_state_dict(model, state_dict)`` loads and peft's
    ``adapter_model.safetensors`` holds. A trained entry outside the adapter (a base parameter the
    user unfroze, a persistent buffer) is added under its own name, which ``set_peft_model_state_dict``
    passes through to ``load_state_dict`` unchanged.
    """
    from peft import get_peft_model_state_dict  # the model is a PeftModel, so peft is there

    metadata = peft_metadata(model)
    adapters = set(model.peft_config)
    state = get_peft_model_state_dict(
        model, state_dict=trained, adapter_name=metadata["adapter_name"], save_embedding_layers=False
    )
    for name, tensor in trained.items():
        if adapters.isdisjoint(name.split(".")):  # a name with an adapter's in it is peft's, in the state above
            state.setdefault(name, tensor)
    return {"format": PEFT_FORMAT, "format_version": PEFT_FORMAT_VERSION, **metadata, "state_dict": state}


def metadata_differences(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> list[str]:
    """Why a checkpoint's ``student_peft`` does not fit this student's, as lines for the resume error (or none)."""
    if saved is None and current is None:
        return []
    if saved is None or current is None:
        adapter = (saved or current)["adapter_name"]
        described = f"a peft model's trained weights (adapter {adapter!r}) without its frozen base"
        return [
            f"student: the checkpoint holds {described if saved else 'the whole student'}, but this student is "
            f"{'a peft model' if current else 'not a peft model'} (resume with the student built as in that run)"
        ]
    differences = []
    for key in ("adapter_name", "peft_type", "base_model_class"):
        if saved.get(key) != current.get(key):
            differences.append(f"student.{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}")
    old, new = saved.get("peft_config", {}), current.get("peft_config", {})
    for key in sorted(set(old) | set(new)):
        if key not in _CONFIG_FIELDS_NOT_COMPARED and old.get(key) != new.get(key):
            differences.append(f"student.peft_config.{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}")
    old, new = saved.get("frozen", {}), current.get("frozen", {})
    found = []
    for key in sorted(set(old) | set(new)):
        where = f"student (frozen base).{key}"
        if key not in new:
            found.append(f"{where}: in the checkpoint's model, not in this one")
        elif key not in old:
            found.append(f"{where}: in this model, not in the checkpoint's")
        elif list(old[key]) != list(new[key]):
            found.append(f"{where}: shape {tuple(old[key])} in the checkpoint, {tuple(new[key])} now")
    more = [f"... and {len(found) - 10} more in the frozen base"] if len(found) > 10 else []
    return differences + found[:10] + more
