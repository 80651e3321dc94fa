"""The ``identity`` projection: for matches where student and teacher widths are already equal."""

from __future__ import annotations

from pydantic import BaseModel
from torch import nn

from distill_core.components import ComponentInfo
from distill_core.hookspecs import hookimpl


def identity_projection(dim_in: int, dim_out: int) -> nn.Identity:
    """Return ``nn.Identity()``; refuse differing widths, which only a learned map can bridge.

    :raises ValueError: ``dim_in != dim_out``.
    """
    if dim_in != dim_out:
        raise ValueError(
            f"Projection `identity` keeps the width, so it needs dim_in == dim_out but got "
            f"dim_in={dim_in} and dim_out={dim_out}; use `linear` to map {dim_in} -> {dim_out}"
        )
    return nn.Identity()


@hookimpl
def declare_components() -> list[ComponentInfo]:
    """Declare the identity projection (no options)."""
    return [
        ComponentInfo(
            kind="projection",
            name="identity",
            params=None,
            summary="No-op projection for equal student and teacher widths",
        )
    ]


@hookimpl
def build_projection(name: str, dim_in: int, dim_out: int, params: BaseModel | None) -> nn.Module | None:
    """Return a new ``identity`` projection if asked for it, else None."""
    if name != "identity":
        return None
    return identity_projection(dim_in, dim_out)


__all__ = ["build_projection", "declare_components", "identity_projection"]
