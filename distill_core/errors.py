"""Exceptions distill raises. Each message names the culprit (field, tensor, plugin) and the fix."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


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


class NoValidTokensError(DistillError, ValueError):
    """An optimisation step had no position that counts (every label -100, every mask 0): it would train nothing."""


def close_names(name: object, known: Iterable[str], *, n: int = 1) -> list[str]:
    """Return up to ``n`` of ``known`` that ``name`` was probably meant to be, best first.

    Case is ignored (``KL`` gives ``kl``). Otherwise the names most similar in spelling
    (``hiden_mse`` gives ``hidden_mse``); for a name with none similar, a known name that is one of
    its parts (``kl_div`` gives ``kl``), its initials (``cross_entropy`` gives ``ce``) or its start
    (``kldiv`` gives ``kl``): short names such as the KD losses' are too short for spelling
    similarity alone.
    """
    by_lower: dict[str, str] = {}
    for candidate in known:
        by_lower.setdefault(candidate.lower(), candidate)
    lower = str(name).lower()
    if lower in by_lower:
        return [by_lower[lower]]
    similar = difflib.get_close_matches(lower, list(by_lower), n=n)
    if similar:
        return [by_lower[match] for match in similar]
    parts = [part for part in re.split(r"[^0-9a-z]+", lower) if part]
    guesses = [*parts, "".join(part[0] for part in parts) if len(parts) > 1 else ""]
    guesses += sorted((k for k in by_lower if len(k) >= 2 and lower.startswith(k)), key=len, reverse=True)
    return [by_lower[guess] for guess in dict.fromkeys(guesses) if guess in by_lower][:n]


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the likeliest of ``known`` (:func:`close_names`), or ``""`` when none is."""
    close = close_names(name, known)
    return f"; did you mean {close[0]!r}?" if close else ""
