"""What every config model shares: the strict base model, the registry-name checks, the did-you-mean
hints for misspelt keys, and the dict / JSON file helpers.

A model that names a registered component (a loss, a projection) takes its two validators from
:func:`registry_validators`, so the name check, the params check and their messages exist once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from typing import Any, ClassVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from distill_core.atomic import write_text_atomic
from distill_core.errors import UnknownComponentError, close_names, did_you_mean


class ConfigModel(BaseModel):
    """The base of every config model: unknown keys are errors, instances are frozen."""

    # allow_inf_nan=False: a temperature or weight of inf/NaN passes `gt=0`/`ge=0` but breaks the
    # first training step, so every float field must be finite
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


def registered(kind: str, name: str) -> Any:
    """Return the registered ``kind`` component ``name``; an unknown name becomes a ValueError for pydantic.

    The message is the registry's: the closest names, what is registered, and ``distill plugins``.
    """
    from distill_core.registry import get_registry

    try:
        return get_registry().get(kind, name)
    except UnknownComponentError as exc:
        raise ValueError(str(exc)) from None


def validated_params(kind: str, name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Return ``params`` checked by the params model of component ``name`` (JSON-ready, defaults filled in)."""
    validated = registered(kind, name).validate_params(params or {})
    return {} if validated is None else validated.model_dump(mode="json")


def registry_validators(kind: str, name_field: str, params_field: str) -> tuple[Any, Any]:
    """Return the field validators of a registered component named in a config, and its params.

    ``name_field`` must name a registered ``kind`` component; ``params_field`` is replaced by the
    params that component's model validated. ``name_field`` must be declared before
    ``params_field`` (pydantic validates fields in order). Use in a model's body::

        _registered_loss, _loss_params = registry_validators("match_loss", "loss", "params")
    """

    def check_name(cls: type, name: str) -> str:
        registered(kind, name)
        return name

    def check_params(cls: type, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get(name_field)
        if name is None:  # the name already failed; that error is reported
            return params
        return validated_params(kind, name, params)

    return (
        field_validator(name_field)(classmethod(check_name)),  # type: ignore[arg-type]
        field_validator(params_field)(classmethod(check_params)),  # type: ignore[arg-type]
    )


def unknown_name(what: str, name: str, known: Sequence[str]) -> str:
    """``"unknown feature 'hiden'; did you mean 'hidden'? Known: hidden, ..."``: a name outside a fixed list."""
    return f"unknown {what} {name!r}{did_you_mean(name, known)} Known: {', '.join(known)}"


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
            close = close_names(item["loc"][-1], _fields_at(model, item["loc"]))
            if close:
                detail["type"] = PydanticCustomError(
                    "extra_forbidden", "Extra inputs are not permitted; did you mean '{close}'?", {"close": close[0]}
                )
                changed = True
        details.append(detail)
    return ValidationError.from_exception_data(error.title, details) if changed else error


#: the sections of a config file that holds both configs, as ``distill validate`` reads it
SECTIONS: tuple[str, ...] = ("training", "distillation")


def is_sectioned(data: dict[str, Any], flat_fields: Collection[str] = ()) -> bool:
    """Whether a config file's object is ``{"training": {...}, "distillation": {...}}`` (either or
    both) rather than one config's fields (``flat_fields``).

    A key that holds an object, is none of ``flat_fields`` and is close to a section name counts as
    a misspelt section, so that it is reported as one (:func:`not_a_section`).
    """

    def section_like(key: str, value: Any) -> bool:
        if key in SECTIONS:
            return True
        return isinstance(value, dict) and key not in flat_fields and bool(did_you_mean(key, SECTIONS))

    return bool(data) and all(section_like(key, value) for key, value in data.items())


def not_a_section(name: str) -> str:
    """The message for a key of a sectioned config file that is no section (a misspelt one)."""
    return f"not a section{did_you_mean(name, SECTIONS)} A sectioned config has {' and/or '.join(map(repr, SECTIONS))}"


def _in_section(error: ValidationError, section: str) -> ValidationError:
    """``error`` with each location under ``section`` (``distillation.temperature``), messages kept."""
    details = [
        InitErrorDetails(
            type=PydanticCustomError(item["type"], item["msg"]), loc=(section, *item["loc"]), input=item["input"]
        )
        for item in error.errors()
    ]
    return ValidationError.from_exception_data(error.title, details)


class SerializableConfig(ConfigModel):
    """A top-level config: the seed API's dict / JSON helpers, and did-you-mean hints for misspelt keys."""

    #: the section of a sectioned config file (:data:`SECTIONS`) this config is read from
    file_section: ClassVar[str]

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
    def from_dict(cls, data: dict[str, Any]) -> SerializableConfig:
        """Build a config from a plain dict (e.g. parsed JSON).

        ``data`` is the config's own fields, or the sectioned form ``distill validate`` reads,
        ``{"training": {...}, "distillation": {...}}``: then this config's own section is read (a
        ``DistillationConfig`` the ``"distillation"`` one) and errors are located under it
        (``distillation.temperature``).
        """
        if not (isinstance(data, dict) and is_sectioned(data, cls.model_fields)):
            return cls.model_validate(data)
        misspelt = [name for name in data if name not in SECTIONS]
        if misspelt:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("unknown_section", not_a_section(name)), loc=(name,), input=data[name]
                    )
                    for name in misspelt
                ],
            )
        section = cls.file_section
        if section not in data:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "missing_section",
                            f"{cls.__name__} reads the {section!r} section of a sectioned config, and this one has "
                            f"only {' and '.join(repr(name) for name in data)}",
                        ),
                        loc=(section,),
                        input=data,
                    )
                ],
            )
        try:
            return cls.model_validate(data[section])
        except ValidationError as exc:
            raise _in_section(exc, section) from None

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> SerializableConfig:
        """Read a config from a JSON file: this config alone, or sectioned as :meth:`from_dict` reads it."""
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{os.fspath(path)}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
                ) from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; ``from_dict`` of it gives an equal config."""
        return self.model_dump(mode="json")

    def to_json_file(self, path: str | os.PathLike[str]) -> None:
        """Write the config as JSON, atomically (a crash never leaves a half-written file)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")
