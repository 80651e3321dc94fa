"""Learned projections from the student width to the teacher width: ``linear``, ``linear_relu``
(alias ``relu``), ``linear_tanh`` (alias ``tanh``); the aliases are TextBrewer's names.

The weight is drawn from N(0, 0.02²) and the bias is zero, the initialisation BERT uses for its
dense layers, so a fresh projection starts as a small random map.
"""

from __future__ import annotations

from typing import Callable

from pydantic import BaseModel
from torch import nn

from distill_core.components import ComponentInfo
from distill_core.hookspecs import hookimpl

#: Standard deviation of the initial projection weights.
INIT_STD = 0.02


def _check_width(value: int, argument: str, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"Expected argument `{argument}` of projection `{name}` to be a positive integer but got {value!r}"
        )


def linear_projection(dim_in: int, dim_out: int) -> nn.Linear:
    """Return ``nn.Linear(dim_in, dim_out)`` with weights ~ N(0, 0.02²) and zero bias."""
    _check_width(dim_in, "dim_in", "linear")
    _check_width(dim_out, "dim_out", "linear")
    layer = nn.Linear(dim_in, dim_out)
    nn.init.normal_(layer.weight, mean=0.0, std=INIT_STD)
    nn.init.zeros_(layer.bias)
    return layer


def linear_relu_projection(dim_in: int, dim_out: int) -> nn.Sequential:
    """Return :func:`linear_projection` followed by a ReLU."""
    return nn.Sequential(linear_projection(dim_in, dim_out), nn.ReLU())


def linear_tanh_projection(dim_in: int, dim_out: int) -> nn.Sequential:
    """Return :func:`linear_projection` followed by a tanh."""
    return nn.Sequential(linear_projection(dim_in, dim_out), nn.Tanh())


_PROJECTIONS: dict[str, tuple[Callable[[int, int], nn.Module], str]] = {
    "linear": (linear_projection, "Linear map from student to teacher width, N(0, 0.02) init"),
    "linear_relu": (linear_relu_projection, "Linear map followed by ReLU"),
    "linear_tanh": (linear_tanh_projection, "Linear map followed by tanh"),
}
#: TextBrewer's names (its ``PROJ_MAP``), so a TextBrewer config's ``proj: ["relu", 384, 768]`` works
_ALIASES: dict[str, tuple[str, ...]] = {"linear_relu": ("relu",), "linear_tanh": ("tanh",)}
_CANONICAL = {alias: name for name, aliases in _ALIASES.items() for alias in aliases}


@hookimpl
def declare_components() -> list[ComponentInfo]:
    """Declare the linear projections of this module (none takes options)."""
    return [
        ComponentInfo(kind="projection", name=name, params=None, summary=summary, aliases=_ALIASES.get(name, ()))
        for name, (_, summary) in _PROJECTIONS.items()
    ]


@hookimpl
def build_projection(name: str, dim_in: int, dim_out: int, params: BaseModel | None) -> nn.Module | None:
    """Return a new projection ``name`` if this module provides it, else None."""
    entry = _PROJECTIONS.get(_CANONICAL.get(name, name))  # plain hook calls may use an alias
    if entry is None:
        return None
    return entry[0](dim_in, dim_out)


__all__ = [
    "INIT_STD",
    "build_projection",
    "declare_components",
    "linear_projection",
    "linear_relu_projection",
    "linear_tanh_projection",
]
