"""``DistillationConfig``: what to distil (KD loss, temperature, weights, their schedules, matches).

Schedules are given as a name, the seed's ``[name, *args]`` or ``{"name": .., **params}``; the
temperature scheduler's params are validated by its own model (:mod:`distill_core.schedules`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from distill_core.config.common import ConfigModel, SerializableConfig, registry_validators, unknown_name
from distill_core.config.matches import IntermediateMatch
from distill_core.schedules import TEMPERATURE_SCHEDULERS, WEIGHT_SCHEDULERS
from distill_core.teacher_cache.config import TeacherCacheConfig

#: TextBrewer ``DistillationConfig`` options distill does not take, and what replaces each; a config
#: that still has one gets this pointer instead of a bare "extra inputs are not permitted"
TEXTBREWER_REPLACED: dict[str, str] = {
    "is_caching_logits": (
        "`is_caching_logits` is TextBrewer's option; distill's teacher-output cache replaces it and is "
        "configured with `DistillationConfig.teacher_cache` (stored teacher outputs stand in for the teacher "
        "forward, for every distiller). Remove `is_caching_logits`"
    ),
}


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
        raise ValueError(unknown_name(field, name, sorted(table)))
    return name, {"args": args, **params}


def _temperature_schedule(value: Any) -> tuple[str, dict[str, Any]]:
    """The temperature scheduler's name and its params, validated by the scheduler's model."""
    name, spec = _schedule_spec(value, TEMPERATURE_SCHEDULERS, "temperature_scheduler")
    params_model = TEMPERATURE_SCHEDULERS[name][0]
    args = spec.pop("args", [])
    fields = list(params_model.model_fields)
    if len(args) > len(fields):
        raise ValueError(
            f"temperature_scheduler {name!r} takes at most {len(fields)} arguments "
            f"({', '.join(fields) or 'none'}), got {len(args)}"
        )
    merged = {**dict(zip(fields, args)), **spec}
    return name, params_model.model_validate(merged).model_dump()


class CrossTokenizerConfig(ConfigModel):
    """KD between a teacher and a student with different tokenizers (docs/cross-tokenizer.md).

    The KD term compares the two models over aligned token groups with the ``aligned_kd_loss``
    named by ``loss`` (``gold``, ``xtoken`` or a plugin's), instead of ``kd_loss_type``.
    """

    loss: str = Field("gold", description="the aligned_kd_loss component comparing the two models' token groups")
    params: dict[str, Any] = Field(default_factory=dict, description="options of that loss")
    max_length: int | None = Field(
        None, ge=2, description="truncate each side's encoding of a text to this many tokens; None: no truncation"
    )

    _registered_loss, _loss_params = registry_validators("aligned_kd_loss", "loss", "params")


#: options of token KD that an aligned loss cannot honour, and why
_NOT_ACROSS_TOKENIZERS: dict[str, str] = {
    "probability_shift": "it swaps logits of the same token ids on both sides",
    "kd_vocab_size": "the two vocabularies are matched by token strings, not cut to shared ids",
    "teacher_cache": "the cache stores teacher outputs in the student's tokens (not yet in the teacher's own)",
}


class DistillationConfig(SerializableConfig):
    """What to distil: KD loss, temperature, weights, schedules and intermediate matches.

    Every number must be finite (a temperature or weight of inf or NaN is refused here, not at the
    first step). Coming from TextBrewer: the field names are TextBrewer's; its ``is_caching_logits``
    is replaced by the teacher-output cache (``teacher_cache``), and a config that sets it is
    refused with that pointer.
    """

    file_section: ClassVar[str] = "distillation"

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

    cross_tokenizer: CrossTokenizerConfig | None = Field(
        None,
        description="distil across tokenizers: KD over aligned token groups with an aligned_kd_loss, e.g. "
        "{'loss': 'gold'}; needs tokenizer_T and tokenizer_S; None: token KD (one vocabulary)",
    )

    _registered_kd_loss, _kd_params = registry_validators("kd_loss", "kd_loss_type", "kd_loss_params")

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
    def _valid_temperature_schedule(cls, value: Any) -> Any:
        _temperature_schedule(value)
        return value

    @field_validator("hard_label_weight_scheduler", "kd_loss_weight_scheduler")
    @classmethod
    def _weight_schedule(cls, value: str, info: ValidationInfo) -> str:
        _schedule_spec(value, WEIGHT_SCHEDULERS, info.field_name)
        return value

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

    @model_validator(mode="after")
    def _cross_tokenizer_options(self) -> DistillationConfig:
        if self.cross_tokenizer is None:
            return self
        set_options = [name for name in _NOT_ACROSS_TOKENIZERS if getattr(self, name) not in (None, False)]
        name, _ = self.temperature_schedule()
        problems = [f"{option} ({_NOT_ACROSS_TOKENIZERS[option]})" for option in set_options]
        if name not in ("none", "constant"):
            problems.append(f"temperature_scheduler {name!r} (it reads logits of one vocabulary)")
        if self.intermediate_matches:
            problems.append("intermediate_matches (the two models' positions are different tokens)")
        if self.chunked_token_kd:
            problems.append("chunked_token_kd=True (aligned losses read whole token groups, not rows)")
        if problems:
            raise ValueError(
                f"cross_tokenizer KD does not work with {'; '.join(problems)}; remove "
                f"{'it' if len(problems) == 1 else 'them'} or set cross_tokenizer=None"
            )
        return self

    def temperature_schedule(self) -> tuple[str, dict[str, Any]]:
        """Return the temperature scheduler's name and validated params."""
        return _temperature_schedule(self.temperature_scheduler)
