"""Intermediate and custom matches: projections, bound losses, and forward-hook capture.

A configured match is bound once at setup (:func:`bind_match`) to its loss implementation and its
projection; at each step :meth:`BoundMatch.compute` projects the student's feature and calls the
loss. The first step of each task checks the projection's input width first
(:meth:`BoundMatch.check_student_feature`), so a wrong ``dim_in`` is named before any loss runs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distill_core.config import CustomMatch, IntermediateMatch, ProjectionSpec
from distill_core.errors import AdaptorError, ShapeMismatchError
from distill_core.modules import unwrap
from distill_core.registry import Component, get_projection, get_registry


def build_projection(spec: ProjectionSpec | None) -> nn.Module:
    if spec is None:
        return nn.Identity()
    return get_projection(spec.name, spec.dim_in, spec.dim_out, **spec.params)


@dataclass
class BoundMatch:
    """A configured match bound to its loss implementation and projection, ready for the step."""

    label: str  # e.g. "intermediate_matches.0 (hidden, layer_T=8, layer_S=2, loss 'hidden_mse')"
    term: str  # logging tag, e.g. "match0_hidden_mse"
    spec: IntermediateMatch | CustomMatch
    component: Component
    params: Any
    projection: nn.Module

    def compute(self, feature_S: Any, feature_T: Any, mask: torch.Tensor | None) -> torch.Tensor:
        """The match's loss: the student's feature through the projection, against the teacher's."""
        if self.spec.proj is not None:
            feature_S = (
                [self.projection(f) for f in feature_S] if isinstance(feature_S, list) else self.projection(feature_S)
            )
        try:
            return self.component.call_in_order(feature_S, feature_T, mask, self.params)
        except ShapeMismatchError as exc:
            raise ShapeMismatchError(f"{self.label}: {exc}{self._width_hint(feature_S, feature_T)}") from exc
        except ValueError as exc:  # e.g. a two-layer loss given one layer
            raise ValueError(f"{self.label}: {exc}") from exc

    def _width_hint(self, feature_S: Any, feature_T: Any) -> str:
        """How to make the widths agree, when only the last axis of the two features differs."""
        if not (isinstance(feature_S, torch.Tensor) and isinstance(feature_T, torch.Tensor)):
            return ""
        if feature_S.shape[:-1] != feature_T.shape[:-1] or feature_S.shape[-1] == feature_T.shape[-1]:
            return ""
        width_T, proj = feature_T.shape[-1], self.spec.proj
        if proj is None:
            return (
                f"; the widths differ ({feature_S.shape[-1]} and {width_T}): map the student's to the teacher's "
                f'with a projection, e.g. "proj": ["linear", {feature_S.shape[-1]}, {width_T}]'
            )
        return (
            f"; projection {proj.name!r} maps to dim_out={proj.dim_out}, the teacher's width is {width_T}: set "
            f"dim_out to {width_T}"
        )

    def check_student_feature(self, feature_S: Any) -> None:
        """First step: the student's feature must have the projection's input width."""
        proj = self.spec.proj
        if proj is None:
            return
        for feature in feature_S if isinstance(feature_S, list) else [feature_S]:
            if feature.shape[-1] != proj.dim_in:
                raise ShapeMismatchError(
                    f"{self.label}: projection {proj.name!r} expects student width dim_in={proj.dim_in}, but the "
                    f"student feature has shape {tuple(feature.shape)} (width {feature.shape[-1]}); set proj "
                    f"dim_in to {feature.shape[-1]}"
                )


def bind_match(spec: IntermediateMatch | CustomMatch, index: int, kind: str) -> BoundMatch:
    component = get_registry().get("match_loss", spec.loss)
    if isinstance(spec, IntermediateMatch):
        label = (
            f"intermediate_matches.{index} ({spec.feature}, layer_T={spec.layer_T}, layer_S={spec.layer_S}, "
            f"loss {spec.loss!r})"
        )
    else:
        label = f"custom_matches.{index} ({spec.module_T} -> {spec.module_S}, loss {spec.loss!r})"
    return BoundMatch(
        label=label,
        term=f"{kind}{index}_{spec.loss}",
        spec=spec,
        component=component,
        params=component.validate_params(spec.params),
        projection=build_projection(spec.proj),
    )


def resolve_submodule(model: nn.Module, path: str, role: str) -> nn.Module:
    """``model.get_submodule(path)`` with an error that suggests the closest existing paths."""
    try:
        return unwrap(model).get_submodule(path)
    except AttributeError:
        names = [name for name, _ in unwrap(model).named_modules() if name]
        close = difflib.get_close_matches(path, names, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
        raise AdaptorError(
            f"{role} has no submodule {path!r}{hint} List them with [n for n, _ in model.named_modules()]"
        ) from None


class OutputCapture:
    """Forward hooks that keep the latest output of named submodules during a run."""

    def __init__(self) -> None:
        self.outputs: dict[tuple[str, str], torch.Tensor] = {}
        self._handles: list[Any] = []

    def attach(self, key: tuple[str, str], module: nn.Module) -> None:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            elif not isinstance(output, torch.Tensor) and hasattr(output, "last_hidden_state"):
                output = output.last_hidden_state
            self.outputs[key] = output

        self._handles.append(module.register_forward_hook(hook))

    def take(self, key: tuple[str, str], label: str) -> torch.Tensor:
        try:
            return self.outputs.pop(key)
        except KeyError:
            raise AdaptorError(
                f"{label}: submodule {key[1]!r} of the {key[0]} did not run during the forward pass, so its output "
                f"could not be captured"
            ) from None

    def clear(self) -> None:
        self.outputs.clear()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs.clear()
