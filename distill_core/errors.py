"""Exceptions distill raises. Each message names the culprit (field, tensor, plugin) and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class DistillError(Exception):
    """Base class of distill's own errors."""


class PluginError(DistillError):
    """A plugin could not be loaded or declares something invalid."""


class PluginLoadError(PluginError):
    """An entry point of group ``distill`` failed to import or register."""


class DuplicateComponentError(PluginError):
    """Two plugins declare the same component name."""


class UnknownComponentError(DistillError, KeyError):
    """A config or call names a component that no plugin provides."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ShapeMismatchError(DistillError, ValueError):
    """Student and teacher tensors (or an adaptor's output) have incompatible shapes."""


class AdaptorError(DistillError, ValueError):
    """An adaptor returned something the loop cannot use."""


class CheckpointError(DistillError):
    """A checkpoint is missing, corrupt, or does not match the run."""


class NonFiniteLossError(DistillError, FloatingPointError):
    """A loss term became NaN or infinite."""


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``known`` to ``name``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
