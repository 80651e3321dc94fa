"""The ``distill`` command: ``plugins``, ``validate``, ``schema`` and ``demo``."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from distill_core.errors import PluginError


def _plugins(args: argparse.Namespace) -> int:
    from distill_core.plugins import get_plugin_manager
    from distill_core.registry import list_components

    components = list_components()
    failures = get_plugin_manager().failures
    if args.json:
        print(json.dumps([c.describe() for c in components], indent=2))
    else:
        header = ("component", "kind", "plugin", "distribution", "version", "summary")
        rows = [(c.name, c.kind, c.plugin, c.distribution, c.version, c.summary) for c in components]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            cells = [str(cell).ljust(width) for cell, width in zip(row, widths)]
            print("  ".join([*cells, str(row[-1])]).rstrip())
    for failure in failures:
        print(f"error: {failure.message()}", file=sys.stderr)
    return 1 if failures else 0


def _fields_at(model: Any, loc: Sequence[Any]) -> list[str]:
    """The field names of the config model that holds the key at ``loc`` (for did-you-mean)."""
    import typing

    from pydantic import BaseModel

    def model_in(annotation: Any) -> Any:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        for argument in typing.get_args(annotation):
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


def _format_errors(title: str, model: Any, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden" and item["loc"]:
            close = difflib.get_close_matches(str(item["loc"][-1]), _fields_at(model, item["loc"]), n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        lines.append(f"  {title}.{path}: {message}")
    return lines


def _validate(args: argparse.Namespace) -> int:
    from distill_core.config import DistillationConfig, TrainingConfig

    try:
        with open(args.config, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read {args.config}: {exc}", file=sys.stderr)
        return 1
    if not isinstance(data, dict):
        print(f"error: {args.config} must hold a JSON object, got {type(data).__name__}", file=sys.stderr)
        return 1
    sections: dict[str, tuple[type, Any]]
    if set(data) <= {"training", "distillation"} and data:
        sections = {
            name: (cls, data[name])
            for name, cls in (("training", TrainingConfig), ("distillation", DistillationConfig))
            if name in data
        }
    else:  # a flat object is a distillation config
        sections = {"distillation": (DistillationConfig, data)}
    errors: list[str] = []
    for name, (cls, section) in sections.items():
        try:
            cls.model_validate(section)
        except ValidationError as exc:
            errors.extend(_format_errors(name, cls, exc))
    if errors:
        print(f"{args.config}: {len(errors)} error(s)", file=sys.stderr)
        print("\n".join(errors), file=sys.stderr)
        return 1
    print(f"{args.config}: valid ({', '.join(sections)})")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from distill_core.config import DistillationConfig, TrainingConfig
    from distill_core.registry import get_registry
    from distill_core.schedules import TEMPERATURE_SCHEDULERS, WEIGHT_SCHEDULERS

    registry = get_registry()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "distill config",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "training": TrainingConfig.model_json_schema(),
            "distillation": DistillationConfig.model_json_schema(),
        },
        "x-registry": {
            "kd_loss": registry.names("kd_loss"),
            "match_loss": registry.names("match_loss"),
            "projection": registry.names("projection"),
            "temperature_scheduler": sorted(TEMPERATURE_SCHEDULERS),
            "weight_scheduler": sorted(WEIGHT_SCHEDULERS),
        },
    }
    _inject_enums(schema["properties"]["distillation"], registry)
    print(json.dumps(schema, indent=2))
    return 0


def _inject_enums(schema: dict[str, Any], registry: Any) -> None:
    """Put the live registry's names into the schema, so editors can complete them."""
    props = schema.get("properties", {})
    props.get("kd_loss_type", {})["enum"] = registry.names("kd_loss")
    defs = schema.get("$defs", {})
    for match in ("IntermediateMatch", "CustomMatch"):
        if match in defs:
            defs[match]["properties"]["loss"]["enum"] = registry.names("match_loss")
    if "ProjectionSpec" in defs:
        defs["ProjectionSpec"]["properties"]["name"]["enum"] = registry.names("projection")


def _demo(demo_args: Sequence[str]) -> int:
    """``distill demo ...``: the options are the demo's own (``distill demo --help`` lists them)."""
    try:
        from distill_core.demo import run_demo_cli
    except ImportError as exc:
        print(f"error: the demo needs optional packages: {exc}", file=sys.stderr)
        return 1
    return run_demo_cli(list(demo_args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Knowledge distillation toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    plugins = sub.add_parser("plugins", help="list every installed component and its plugin")
    plugins.add_argument("--json", action="store_true", help="print a JSON list")
    plugins.set_defaults(func=_plugins)
    validate = sub.add_parser("validate", help="validate a JSON config file")
    validate.add_argument(
        "config", help='JSON object with "training" and/or "distillation", or a flat distillation config'
    )
    validate.set_defaults(func=_validate)
    schema = sub.add_parser("schema", help="print the JSON schema of the configs with the live registry's names")
    schema.set_defaults(func=_schema)
    # listed for `distill --help`; main() hands everything after "demo" to the demo's own parser
    sub.add_parser("demo", help="distil a real MiniLM teacher on real data, or with --task lm SmolLM2-135M into a "
                   "small LM (see `distill demo --help`)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        return _demo(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
