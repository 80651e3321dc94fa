"""What decides whether stored teacher outputs are still the ones a run would compute.

A teacher's fingerprint (stored in its ``meta.json``; compared when a run opens the cache) holds:

- ``teacher``: the model's class and a digest of its ``state_dict`` (every parameter and buffer,
  their names, dtypes, shapes and bytes): one changed weight changes it;
- ``adaptor`` and ``call``: the teacher adaptor (its qualified name and a digest of its source when
  Python can read it) and the keyword arguments of the teacher's call (``output_hidden_states``...);
- ``outputs``: the selection of outputs (logits or not, the matched layers of each feature, masks,
  custom-match submodules), ``top_k``, ``value_dtype``, ``kd_vocab_size`` and, with top-k only, the
  temperature (dense logits are stored raw, exact for any temperature);
- ``precision`` (autocast changes the teacher's numbers) and ``keys`` (dataset indices or batch
  positions: what a key means).

The content of each example is checked per entry instead (its digest is in the entry's record; see
:func:`distill_core.teacher_cache.keys.describe_batch`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any

import torch
from torch import nn


def state_digest(model: nn.Module) -> str:
    """A digest of ``model.state_dict()``: names, dtypes, shapes and values (reads the weights to the host once)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if hasattr(tensor, "full_tensor"):  # a sharded (DTensor) teacher: its whole value, gathered
            tensor = tensor.full_tensor()
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def code_identity(function: Any) -> dict[str, Any]:
    """Name and source digest of an adaptor (a function, or an instance of a class with ``__call__``)."""
    target = function if inspect.isfunction(function) or inspect.ismethod(function) else type(function)
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"
    try:
        source = hashlib.blake2b(inspect.getsource(target).encode(), digest_size=8).hexdigest()
    except (OSError, TypeError):
        source = None
    return {"name": name, "source": source}


def call_arguments(arguments: dict[str, Any]) -> dict[str, str]:
    return {key: repr(value) for key, value in sorted(arguments.items())}


def digest_of(fingerprint: dict[str, Any]) -> str:
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


_WHAT = {
    "teacher": "the teacher's weights or class",
    "adaptor": "the teacher adaptor",
    "call": "the arguments of the teacher's call",
    "outputs": "the selection of stored outputs",
    "precision": "the precision (mixed_precision)",
    "keys": "what keys mean (dataset indices or batch positions)",
    "format": "the cache format",
}


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Readable lines naming what differs between two fingerprints (empty when they are equal)."""
    lines = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key), current.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            parts = [
                f"{part}: {old.get(part)!r} when built, {new.get(part)!r} now"
                for part in sorted(set(old) | set(new))
                if old.get(part) != new.get(part)
            ]
            lines.append(f"{_WHAT.get(key, key)} ({'; '.join(parts)})")
        else:
            lines.append(f"{_WHAT.get(key, key)} ({old!r} when built, {new!r} now)")
    return lines
