"""What a distillation matches besides the logits: projections and intermediate / custom matches.

A match is ``{layer_T, layer_S, feature, loss, weight, proj, params}`` (or ``module_T`` /
``module_S`` for a custom match); its loss and projection names are checked against the live
registry and their params by the component's own model.
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, Field, PrivateAttr, ValidationInfo, field_validator, model_serializer, model_validator

from distill_core.adaptors.contract import FEATURES, Feature
from distill_core.config.common import ConfigModel, registry_validators, unknown_name

LayerIndex = Union[int, list[int]]


class ProjectionSpec(ConfigModel):
    """A projection from student width to teacher width.

    Accepted as the seed's list ``[name, dim_in, dim_out]`` / ``[name, dim_in, dim_out, {group
    options}]`` or as a dict with the same names; it is written back in the form it was given.
    """

    name: str
    dim_in: int = Field(gt=0)
    dim_out: int = Field(gt=0)
    params: dict[str, Any] = Field(default_factory=dict)
    group_options: dict[str, Any] = Field(default_factory=dict)
    _list_length: int = PrivateAttr(0)

    _registered, _projection_params = registry_validators("projection", "name", "params")

    @model_validator(mode="wrap")
    @classmethod
    def _accept_list_form(cls, data: Any, handler: Any) -> ProjectionSpec:
        if isinstance(data, (list, tuple)):
            if not 3 <= len(data) <= 4:
                raise ValueError(
                    f"a projection list must be [name, dim_in, dim_out] or [name, dim_in, dim_out, "
                    f"{{optimizer group options}}], got {list(data)!r}"
                )
            as_dict = {"name": data[0], "dim_in": data[1], "dim_out": data[2]}
            if len(data) == 4:
                as_dict["group_options"] = data[3]
            spec = handler(as_dict)
            spec._list_length = len(data)
            return spec
        return handler(data)

    @field_validator("group_options")
    @classmethod
    def _no_params_option(cls, options: dict[str, Any]) -> dict[str, Any]:
        if "params" in options:
            raise ValueError("group_options must not contain 'params': distill adds the projection's parameters")
        return options

    @model_serializer(mode="wrap")
    def _write_in_given_form(self, handler: Any) -> Any:
        data = handler(self)
        if self._list_length:
            as_list = [data["name"], data["dim_in"], data["dim_out"]]
            if self._list_length == 4:
                as_list.append(data["group_options"])
            return as_list
        return data


class _MatchBase(ConfigModel):
    loss: str
    weight: float = Field(1.0, ge=0)
    proj: ProjectionSpec | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    teacher: int | None = Field(None, ge=0, description="index of the teacher (multi-teacher runs)")

    _registered_loss, _loss_params = registry_validators("match_loss", "loss", "params")


class IntermediateMatch(_MatchBase):
    """``{layer_T, layer_S, feature, loss, weight, proj, params}``: one teacher/student feature match."""

    layer_T: LayerIndex
    layer_S: LayerIndex
    feature: Feature = Field(
        description="the adaptor output matched; the encoder_*, decoder_* and cross_attention features come "
        "from encoder-decoders (docs/adaptors.md)"
    )

    @field_validator("feature", mode="before")
    @classmethod
    def _known_feature(cls, feature: Any) -> Any:
        if isinstance(feature, str) and feature not in FEATURES:
            raise ValueError(unknown_name("feature", feature, FEATURES))
        return feature

    @field_validator("layer_T", "layer_S")
    @classmethod
    def _non_negative(cls, layer: LayerIndex, info: ValidationInfo) -> LayerIndex:
        layers = layer if isinstance(layer, list) else [layer]
        if not layers:
            raise ValueError(f"{info.field_name} must be a layer index or a non-empty list of them")
        bad = [index for index in layers if index < 0]
        if bad:
            raise ValueError(f"{info.field_name} must hold layer indices >= 0, got {bad}")
        return layer

    @model_validator(mode="before")
    @classmethod
    def _must_be_mapping(cls, data: Any) -> Any:
        if not isinstance(data, (dict, BaseModel)):
            raise ValueError(f"an intermediate match must be a dict, got {type(data).__name__}")
        return data


class CustomMatch(_MatchBase):
    """Match the outputs of two submodules named by dotted path (``bert.encoder.layer.5.output``)."""

    module_T: str = Field(min_length=1)
    module_S: str = Field(min_length=1)
