"""Reading a run file: YAML or JSON, ``section.field=value`` overrides, and the problems found.

Every problem is a :class:`Problem` with the field path it is about (``data.train_file``,
``distillation.intermediate_matches.0.layer_T``); :class:`RunFileError` carries all of them, so a
user fixes a file once rather than once per problem.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from distill_core.errors import DistillError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a run, and the field path it is about."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class RunFileError(DistillError, ValueError):
    """The run file cannot be run; ``problems`` lists every reason found."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n{lines}")


def problems_of(error: ValidationError, *, prefix: Sequence[str | int] = ()) -> list[Problem]:
    """Each error of a pydantic validation as a :class:`Problem` at its dotted field path."""
    found = []
    for item in error.errors():
        path = ".".join(str(part) for part in (*prefix, *item["loc"])) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        found.append(Problem(path, message))
    return found


def read_run_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the object in a YAML (``.yaml``/``.yml``) or JSON run file; raise RunFileError if there is none.

    ``recipe:NAME`` reads the shipped recipe ``NAME`` (:mod:`distill_core.run.recipes`).
    """
    source = os.fspath(path)
    if source.startswith("recipe:"):
        from distill_core.run.recipes import recipe_path

        try:
            path = recipe_path(source.removeprefix("recipe:"))
        except LookupError as exc:
            raise RunFileError(source, [Problem("(file)", str(exc))]) from None
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise RunFileError(source, [Problem("(file)", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFileError(source, [Problem("(file)", f"cannot be read ({exc})")]) from None
    if Path(path).suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            problem = f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
            raise RunFileError(source, [Problem("(file)", problem)]) from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RunFileError(source, [Problem("(file)", f"not valid YAML ({exc})")]) from None
    if not isinstance(data, dict):
        kind = "nothing" if data is None else type(data).__name__
        raise RunFileError(source, [Problem("(file)", f"must hold a mapping of sections, got {kind}")])
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return ``data`` with each ``section.field=value`` set (the value read as YAML: ``3``, ``true``, ``[1, 2]``).

    A list index is a number in the path (``distillation.intermediate_matches.0.weight=2``). An
    override that is not ``dotted.path=value`` raises ValueError; a wrong field name is left for
    validation to report, with its did-you-mean.
    """
    import yaml

    merged = json.loads(json.dumps(data))  # a deep copy; the file's values are JSON types
    for override in overrides:
        key, sep, raw = override.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"an override is section.field=value, got {override!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        node: Any = merged
        for index, part in enumerate(parts[:-1]):
            step: Any = int(part) if isinstance(node, list) and part.isdigit() else part
            if isinstance(node, list):
                if not isinstance(step, int) or step >= len(node):
                    raise ValueError(
                        f"override {override!r}: {'.'.join(parts[: index + 1])} is not an item of the list"
                    )
                node = node[step]
                continue
            child = node.get(step)
            if not isinstance(child, (dict, list)):
                child = node[step] = {}
            node = child
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ValueError(f"override {override!r}: {key} is not an item of the list")
            node[int(last)] = value
        else:
            node[last] = value
    return merged
