"""pydantic configs: TrainingConfig, DistillationConfig and the match / projection specs.

Every name (loss, projection, schedule) is checked against the live registry when a config is
built; errors carry the field path (``intermediate_matches.2.loss``). Configs are frozen: training
never mutates them (schedules live in the run state).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from distill_core.atomic import write_text_atomic
from distill_core.errors import UnknownComponentError, did_you_mean
from distill_core.schedules import TEMPERATURE_SCHEDULERS, WEIGHT_SCHEDULERS
from distill_core.teacher_cache.config import TeacherCacheConfig

LayerIndex = Union[int, list[int]]
# The adaptor keys an intermediate match can read (distill_core.adaptors.FEATURE_KEYS).
Feature = Literal[
    "hidden",
    "attention",
    "encoder_hidden",
    "decoder_hidden",
    "encoder_attention",
    "decoder_attention",
    "cross_attention",
]
FEATURES: tuple[str, ...] = get_args(Feature)

#: TextBrewer ``DistillationConfig`` options distill does not take, and what replaces each; a config
#: that still has one gets this pointer instead of a bare "extra inputs are not permitted"
TEXTBREWER_REPLACED: dict[str, str] = {
    "is_caching_logits": (
        "`is_caching_logits` is TextBrewer's option; distill's teacher-output cache replaces it and is "
        "configured with `DistillationConfig.teacher_cache` (stored teacher outputs stand in for the teacher "
        "forward, for every distiller). Remove `is_caching_logits`"
    ),
}


def _lookup(kind: str, name: str) -> Any:
    """Return the registered component, turning an unknown name into a ValueError for pydantic."""
    from distill_core.registry import get_registry

    try:
        return get_registry().get(kind, name)
    except UnknownComponentError as exc:
        raise ValueError(str(exc)) from None


def _validated_params(kind: str, name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    component = _lookup(kind, name)
    validated = component.validate_params(params or {})
    return {} if validated is None else validated.model_dump(mode="json")


class _Model(BaseModel):
    # allow_inf_nan=False: a temperature or weight of inf/NaN passes `gt=0`/`ge=0` but breaks the
    # first training step, so every float field must be finite
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


def _fields_at(model: Any, loc: Sequence[Any]) -> list[str]:
    """The field names of the config model that holds the key at ``loc`` (for did-you-mean)."""

    def model_in(annotation: Any) -> Any:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        for argument in get_args(annotation):
            found = model_in(argument)
            if found is not None:
                return found
        return None

    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = None if field is None else model_in(field.annotation)
    return list(model.model_fields) if model is not None else []


def with_suggestions(error: ValidationError, model: type[BaseModel]) -> ValidationError:
    """``error`` with "did you mean 'temperature'?" added to each unknown key close to a field of its model."""
    details: list[Any] = []
    changed = False
    for item in error.errors():
        detail: dict[str, Any] = {"type": item["type"], "loc": item["loc"], "input": item["input"]}
        if "ctx" in item:
            detail["ctx"] = item["ctx"]
        if item["type"] == "extra_forbidden" and item["loc"]:
            close = difflib.get_close_matches(str(item["loc"][-1]), _fields_at(model, item["loc"]), n=1)
            if close:
                detail["type"] = PydanticCustomError(
                    "extra_forbidden", "Extra inputs are not permitted; did you mean '{close}'?", {"close": close[0]}
                )
                changed = True
        details.append(detail)
    return ValidationError.from_exception_data(error.title, details) if changed else error


class _SerializableConfig(_Model):
    """Adds the seed API's dict / JSON helpers, and did-you-mean hints for misspelt keys."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise with_suggestions(exc, type(self)) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise with_suggestions(exc, cls) from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _SerializableConfig:
        """Build a config from a plain dict (e.g. parsed JSON)."""
        return cls.model_validate(data)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> _SerializableConfig:
        """Read a config from a JSON file."""
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{os.fspath(path)}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
                ) from None
        return cls.model_validate(data)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; ``from_dict`` of it gives an equal config."""
        return self.model_dump(mode="json")

    def to_json_file(self, path: str | os.PathLike[str]) -> None:
        """Write the config as JSON, atomically (a crash never leaves a half-written file)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")


class ProjectionSpec(_Model):
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

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        _lookup("projection", name)
        return name

    @model_validator(mode="after")
    def _check_params(self) -> ProjectionSpec:
        object.__setattr__(self, "params", _validated_params("projection", self.name, self.params))
        if "params" in self.group_options:
            raise ValueError("group_options must not contain 'params': distill adds the projection's parameters")
        return self

    @model_serializer(mode="wrap")
    def _write_in_given_form(self, handler: Any) -> Any:
        data = handler(self)
        if self._list_length:
            as_list = [data["name"], data["dim_in"], data["dim_out"]]
            if self._list_length == 4:
                as_list.append(data["group_options"])
            return as_list
        return data


class _MatchBase(_Model):
    loss: str
    weight: float = Field(1.0, ge=0)
    proj: ProjectionSpec | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    teacher: int | None = Field(None, ge=0, description="index of the teacher (multi-teacher runs)")

    @field_validator("loss")
    @classmethod
    def _registered_loss(cls, name: str) -> str:
        _lookup("match_loss", name)
        return name

    @field_validator("params")
    @classmethod
    def _loss_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        loss = info.data.get("loss")
        if loss is None:  # the loss name already failed; that error is reported
            return params
        return _validated_params("match_loss", loss, params)


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
            hint = did_you_mean(feature, FEATURES)
            raise ValueError(f"unknown feature {feature!r}{hint} Known: {', '.join(FEATURES)}")
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


def _schedule_spec(value: Any, table: dict[str, Any], field: str) -> tuple[str, dict[str, Any]]:
    """Split a schedule given as ``"name"``, ``[name, *args]`` or ``{"name": .., **params}``."""
    if isinstance(value, str):
        name, args, params = value, [], {}
    elif isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        name, args, params = value[0], list(value[1:]), {}
    elif isinstance(value, dict) and isinstance(value.get("name"), str):
        name, args = value["name"], []
        params = {k: v for k, v in value.items() if k != "name"}
    else:
        raise ValueError(f"{field} must be a name, [name, *args] or {{'name': .., ...}}, got {value!r}")
    if name not in table:
        raise ValueError(f"unknown {field} {name!r}{did_you_mean(name, list(table))} Known: {', '.join(sorted(table))}")
    return name, {"args": args, **params}


class TrainingConfig(_SerializableConfig):
    """How to train: accumulation, checkpoint cadence, logging, device.

    Checkpoints: in epoch mode (``ckpt_steps`` unset) a checkpoint is written ``ckpt_frequency``
    times per epoch, every ``ckpt_epoch_frequency`` epochs; in step mode every ``ckpt_steps`` steps.
    The callback is called at each checkpoint, or every ``eval_steps`` steps (and at the end) when
    that is set. It may return a metric: the best student is kept in ``best.pkl``
    (``best_metric_mode``) and training stops after ``early_stopping_patience`` evaluations without
    improvement.
    """

    gradient_accumulation_steps: int = Field(1, ge=1)
    ckpt_frequency: int = Field(1, ge=1)
    ckpt_epoch_frequency: int = Field(1, ge=1)
    ckpt_steps: int | None = Field(None, ge=1)
    log_dir: str | None = None
    output_dir: str = "./saved_models"
    overwrite_output_dir: bool = Field(
        False,
        strict=True,
        description="a new run (no resume_from) in an output_dir holding a previous run's checkpoints deletes "
        "them first (gs*.pkl, checkpoints/step-*.pt and step-*.eval.json, best.pkl, best.json; other files "
        "stay); False: such a run is refused at setup. A run that resumes ignores it",
    )
    device: str | None = Field(
        None, description="torch device; None picks cuda (cuda:<local rank> under torchrun) when available"
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no",
        description="autocast both models to float16 (with a GradScaler) or bfloat16, on CPU or CUDA; loss "
        "terms stay float32",
    )
    fp16: bool = Field(False, description="the seed API's switch: same as mixed_precision='fp16' (CUDA)")
    fp16_opt_level: str = Field("O1", description="accepted for the seed API; only O1 (autocast) exists")
    data_parallel: bool = Field(False, description="wrap models in torch.nn.DataParallel (one process, several GPUs)")
    local_rank: int = Field(
        -1, ge=-1, description="rank of this process on its machine; -1: read LOCAL_RANK under torchrun"
    )
    fsdp: list[Literal["student", "teachers"]] = Field(
        default_factory=list,
        description="under torch.distributed, shard these models with FSDP2 (fully_shard per transformer "
        "block) instead of replicating them; the student is otherwise wrapped in DistributedDataParallel",
    )
    find_unused_parameters: bool | None = Field(
        None,
        description="DistributedDataParallel's find_unused_parameters; None: only when a step may leave part of "
        "the student unused (multi-task)",
    )
    distributed_sampler: Literal["auto", "off"] = Field(
        "auto",
        description="under torch.distributed, give a DataLoader without one a DistributedSampler ('auto'), or "
        "read each rank's data as given ('off')",
    )
    callback_on_all_ranks: bool = Field(
        False, description="run the callback on every rank, not rank 0 alone (always so for an FSDP student)"
    )
    eval_steps: int | None = Field(
        None,
        ge=1,
        description="call the callback every this many optimisation steps and at the end of training, "
        "independently of checkpoints; None: at each checkpoint",
    )
    log_steps: int = Field(10, ge=1, description="write scalars every this many optimisation steps")
    progress_bar: bool = True
    keep_last: int | None = Field(
        None, ge=1, description="keep the newest N checkpoints (gs*.pkl and full state) and the best"
    )
    best_metric_mode: Literal["max", "min"] = Field(
        "max", description="is a larger ('max') or smaller ('min') callback metric better"
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many evaluations in a row without a better metric"
    )
    nonfinite_policy: Literal["raise", "skip"] = Field(
        "raise", description="on a NaN/inf loss: raise NonFiniteLossError, or skip the update and count it"
    )

    @field_validator("device")
    @classmethod
    def _valid_device(cls, device: str | None) -> str | None:
        if device is not None:
            import torch

            try:
                torch.device(device)
            except (RuntimeError, ValueError) as exc:
                raise ValueError(f"invalid torch device {device!r} ({exc}); use e.g. 'cpu' or 'cuda:0'") from None
        return device

    @field_validator("fp16_opt_level")
    @classmethod
    def _opt_level(cls, level: str) -> str:
        if level != "O1":
            raise ValueError(f"only fp16_opt_level 'O1' (torch.autocast) is supported, got {level!r}")
        return level

    @field_validator("fsdp")
    @classmethod
    def _unique_fsdp(cls, models: list[str]) -> list[str]:
        if len(set(models)) != len(models):
            raise ValueError(f"fsdp names a model twice: {models}")
        return models

    @model_validator(mode="after")
    def _one_precision(self) -> TrainingConfig:
        if self.fp16 and self.mixed_precision not in ("no", "fp16"):
            raise ValueError(
                f"fp16=True (the seed API's switch) conflicts with mixed_precision={self.mixed_precision!r}; "
                f"set only mixed_precision"
            )
        return self

    def precision_mode(self) -> str:
        """The effective precision: ``mixed_precision``, or "fp16" when the seed's ``fp16`` is set."""
        return "fp16" if self.fp16 else self.mixed_precision


class DistillationConfig(_SerializableConfig):
    """What to distil: KD loss, temperature, weights, schedules and intermediate matches.

    Every number must be finite (a temperature or weight of inf or NaN is refused here, not at the
    first step). Coming from TextBrewer: the field names are TextBrewer's; its ``is_caching_logits``
    is replaced by the teacher-output cache (``teacher_cache``), and a config that sets it is
    refused with that pointer.
    """

    temperature: float = Field(4.0, gt=0)
    temperature_scheduler: str | list[Any] | dict[str, Any] = "none"
    hard_label_weight: float = Field(0.0, ge=0)
    hard_label_weight_scheduler: str = "none"
    kd_loss_type: str = "ce"
    kd_loss_weight: float = Field(1.0, ge=0)
    kd_loss_weight_scheduler: str = "none"
    kd_loss_params: dict[str, Any] = Field(default_factory=dict)
    probability_shift: bool = False
    kd_vocab_size: int | None = Field(
        None,
        ge=1,
        description="for a padded vocabulary: KD compares only the first N logits (and tokenizer entries); "
        "None: teacher and student output sizes must be equal",
    )
    chunked_token_kd: bool | None = Field(
        None,
        description="token KD of causal LMs with the automatic adaptors from hidden states x head in chunks of "
        "positions, never building (B*L, V) logits; None: when possible (not with a temperature scheduler or "
        "probability_shift), True: required, False: the models' full logits",
    )
    token_kd_chunk_size: int | None = Field(
        None, ge=1, description="positions per chunk of chunked token KD; None: about 25M logits per chunk"
    )
    intermediate_matches: list[IntermediateMatch] = Field(default_factory=list)
    teacher_cache: TeacherCacheConfig | None = Field(
        None,
        description="store the teachers' outputs (in memory or in a directory) so later epochs and runs skip "
        "the teacher forward; None: off (docs/teacher-cache.md)",
    )

    @model_validator(mode="before")
    @classmethod
    def _point_textbrewer_options_to_their_replacement(cls, data: Any) -> Any:
        found = [key for key in TEXTBREWER_REPLACED if isinstance(data, dict) and key in data]
        if found:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("textbrewer_option", TEXTBREWER_REPLACED[key]),
                        loc=(key,),
                        input=data[key],
                    )
                    for key in found
                ],
            )
        return data

    @field_validator("intermediate_matches", mode="before")
    @classmethod
    def _none_is_empty(cls, matches: Any) -> Any:
        return [] if matches is None else matches

    @field_validator("temperature_scheduler")
    @classmethod
    def _temperature_schedule(cls, value: Any) -> Any:
        name, params = _schedule_spec(value, TEMPERATURE_SCHEDULERS, "temperature_scheduler")
        _params_from_spec(name, params)
        return value

    @field_validator("hard_label_weight_scheduler", "kd_loss_weight_scheduler")
    @classmethod
    def _weight_schedule(cls, value: str, info: ValidationInfo) -> str:
        _schedule_spec(value, WEIGHT_SCHEDULERS, info.field_name)
        return value

    @field_validator("kd_loss_type")
    @classmethod
    def _registered_kd_loss(cls, name: str) -> str:
        _lookup("kd_loss", name)
        return name

    @field_validator("kd_loss_params")
    @classmethod
    def _kd_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("kd_loss_type")
        return params if name is None else _validated_params("kd_loss", name, params)

    @model_validator(mode="after")
    def _top_k_needs_fixed_logits(self) -> DistillationConfig:
        cache = self.teacher_cache
        if cache is None or cache.top_k is None:
            return self
        name, _ = self.temperature_schedule()
        if name not in ("none", "constant"):
            raise ValueError(
                f"teacher_cache.top_k={cache.top_k} stores log-probabilities at the fixed temperature "
                f"{self.temperature:g}, but temperature_scheduler {name!r} picks the temperature from the logits at "
                f"each step; use a dense cache (top_k=None), which is exact for any temperature, or no scheduler"
            )
        if self.probability_shift:
            raise ValueError(
                f"teacher_cache.top_k={cache.top_k} keeps the k largest teacher entries, but probability_shift=True "
                f"swaps the true label's logit with the largest one, which needs them all; use top_k=None"
            )
        return self

    def temperature_schedule(self) -> tuple[str, dict[str, Any]]:
        """Return the temperature scheduler's name and validated params."""
        name, params = _schedule_spec(self.temperature_scheduler, TEMPERATURE_SCHEDULERS, "temperature_scheduler")
        return name, _params_from_spec(name, params)


def _params_from_spec(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    params_model = TEMPERATURE_SCHEDULERS[name][0]
    args = spec.pop("args", [])
    fields = list(params_model.model_fields)
    if len(args) > len(fields):
        raise ValueError(
            f"temperature_scheduler {name!r} takes at most {len(fields)} arguments "
            f"({', '.join(fields) or 'none'}), got {len(args)}"
        )
    merged = {**dict(zip(fields, args)), **spec}
    return params_model.model_validate(merged).model_dump()


# The seed documents use both spellings.
TrainConfig = TrainingConfig
DistillConfig = DistillationConfig
