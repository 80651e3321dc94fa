"""The ``distill`` command: ``plugins``, ``validate``, ``schema``, ``cache info``, ``shrink``, ``demo``, ``--version``.

Exit status: 0 success; 1 the command ran and found a problem (an invalid config, a plugin that
failed to load, a teacher cache that cannot be read); 2 a usage error (bad arguments, a config file
that cannot be read as JSON); 141 the reader of the output went away (``distill schema | head``),
quietly, as a shell reports a Unix tool that SIGPIPE ended.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from distill_core.errors import PluginError


USAGE_ERROR = 2
#: 128 + SIGPIPE: stdout was closed by its reader before the output was written
CLOSED_OUTPUT = 141


def _plugins(args: argparse.Namespace) -> int:
    from distill_core.plugins import get_plugin_manager
    from distill_core.registry import get_registry

    # the healthy plugins are listed even when one failed to load; the failure is reported below
    components = get_registry(allow_load_failures=True).components()
    failures = get_plugin_manager().failures
    if args.json:
        print(json.dumps([c.describe() for c in components], indent=2))
    else:
        header = ("component", "aliases", "kind", "plugin", "distribution", "version", "summary")
        rows = [
            (c.name, ", ".join(c.aliases), c.kind, c.plugin, c.distribution, c.version, c.summary) for c in components
        ]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            cells = [str(cell).ljust(width) for cell, width in zip(row, widths)]
            print("  ".join([*cells, str(row[-1])]).rstrip())
    for failure in failures:
        print(f"error: {failure.message()}", file=sys.stderr)
    return 1 if failures else 0


def _format_errors(title: str, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]  # a misspelt key's message already suggests the field (config.with_suggestions)
        lines.append(f"  {title}.{path}: {message}")
    return lines


def _read_json(path: str) -> Any:
    """Return the JSON in ``path``; raise ValueError with a one-line reason if it cannot be read as JSON."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not a JSON file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark (some Windows editors write one) is fine
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8 JSON"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def _validate(args: argparse.Namespace) -> int:
    from distill_core.config import DistillationConfig, TrainingConfig, is_sectioned, not_a_section

    try:
        data = _read_json(args.config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if not isinstance(data, dict):
        print(f"error: {args.config}: must hold a JSON object, got {type(data).__name__}", file=sys.stderr)
        return USAGE_ERROR
    sections: dict[str, tuple[type, Any]]
    errors: list[str] = []
    if is_sectioned(data, DistillationConfig.model_fields):
        sections = {
            name: (cls, data[name])
            for name, cls in (("training", TrainingConfig), ("distillation", DistillationConfig))
            if name in data
        }
        errors.extend(f"  {name}: {not_a_section(name)}" for name in data if name not in sections)
    else:  # a flat object is a distillation config
        sections = {"distillation": (DistillationConfig, data)}
    for name, (cls, section) in sections.items():
        try:
            cls.model_validate(section)
        except ValidationError as exc:
            errors.extend(_format_errors(name, exc))
    if errors:
        print(f"{args.config}: {len(errors)} error(s)", file=sys.stderr)
        print("\n".join(errors), file=sys.stderr)
        return 1
    print(f"{args.config}: valid ({', '.join(sections)})")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from distill_core.config import DistillationConfig, TrainingConfig
    from distill_core.registry import get_registry
    from distill_core.run.config import RunConfig
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
        # a run file (distill train RUN.yaml) holds these two sections and the others it names
        "x-run-file": _run_file_schema(RunConfig, registry),
        "x-registry": {
            "kd_loss": registry.names("kd_loss", aliases=True),
            "match_loss": registry.names("match_loss", aliases=True),
            "projection": registry.names("projection", aliases=True),
            "temperature_scheduler": sorted(TEMPERATURE_SCHEDULERS),
            "weight_scheduler": sorted(WEIGHT_SCHEDULERS),
        },
    }
    _inject_enums(schema["properties"]["distillation"], registry)
    print(json.dumps(schema, indent=2))
    return 0


def _run_file_schema(run_config: Any, registry: Any) -> dict[str, Any]:
    schema = run_config.model_json_schema()
    _inject_enums(schema, registry)  # the match and projection definitions sit at the top of the run schema
    distillation = schema.get("$defs", {}).get("DistillationConfig", {})
    distillation.get("properties", {}).get("kd_loss_type", {})["enum"] = registry.names("kd_loss", aliases=True)
    return schema


def _inject_enums(schema: dict[str, Any], registry: Any) -> None:
    """Put the live registry's names into the schema, so editors can complete them."""
    props = schema.get("properties", {})
    props.get("kd_loss_type", {})["enum"] = registry.names("kd_loss", aliases=True)
    defs = schema.get("$defs", {})
    for match in ("IntermediateMatch", "CustomMatch"):
        if match in defs:
            defs[match]["properties"]["loss"]["enum"] = registry.names("match_loss", aliases=True)
    if "ProjectionSpec" in defs:
        defs["ProjectionSpec"]["properties"]["name"]["enum"] = registry.names("projection", aliases=True)


def _cache_info(args: argparse.Namespace) -> int:
    from distill_core.errors import DistillError
    from distill_core.teacher_cache.info import describe_cache, format_cache

    try:
        summary = describe_cache(args.directory, verify=args.verify)
    except DistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2) if args.json else format_cache(summary))
    return 0


def _demo(demo_args: Sequence[str]) -> int:
    """``distill demo ...``: the options are the demo's own (``distill demo --help`` lists them)."""
    try:
        from distill_core.demo import run_demo_cli
    except ImportError as exc:
        print(f"error: the demo needs optional packages: {exc}", file=sys.stderr)
        return 1
    return run_demo_cli(list(demo_args))


def version_text() -> str:
    """``distill 0.1.0 (torch 2.13.0, Python 3.11.7)``: what ``distill --version`` prints."""
    import platform
    from importlib import metadata

    from distill_core import __version__

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return f"distill {__version__} (torch {torch_version}, Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Knowledge distillation toolkit")
    parser.add_argument(
        "--version",
        action="version",
        version=version_text(),
        help="print the versions of distill, torch and Python, and exit",
    )
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
    cache = sub.add_parser("cache", help="inspect a teacher-output cache directory").add_subparsers(
        dest="cache_command", required=True
    )
    info = cache.add_parser("info", help="entries, bytes, bytes per token and fingerprint of a cache directory")
    info.add_argument("directory", help="the teacher_cache.location of a run")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--verify", action="store_true", help="also read every entry and check its checksum")
    info.set_defaults(func=_cache_info)
    from distill_core.students.command import add_shrink_parser

    add_shrink_parser(sub)
    from distill_core.run.command import add_train_parser

    add_train_parser(sub)
    # listed for `distill --help`; main() hands everything after "demo" to the demo's own parser
    sub.add_parser("demo", help="distil a real MiniLM teacher on real data, or with --task lm SmolLM2-135M into a "
                   "small LM (see `distill demo --help`)")
    return parser


def _run(argv: list[str]) -> int:
    if argv[:1] == ["demo"]:
        return _demo(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _discard_output() -> None:
    """Point stdout at the null device, so that the flush at interpreter exit cannot fail again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (AttributeError, OSError, ValueError):  # no real stdout (replaced, or closed)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``distill ARGV`` and return its exit status."""
    try:
        try:
            return _run(list(sys.argv[1:] if argv is None else argv))
        finally:  # output still buffered fails here, not as "Exception ignored" at interpreter exit
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:  # `distill schema | head`: the reader has what it wanted
        _discard_output()
        return CLOSED_OUTPUT


if __name__ == "__main__":
    raise SystemExit(main())
