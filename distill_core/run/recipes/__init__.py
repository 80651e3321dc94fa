"""Run files shipped with distill: ``distill train recipe:NAME`` runs ``NAME.yaml`` from this folder.

A recipe is an ordinary run file (a user copies it and edits it, docs/run-config.md#recipes); its
first comment line says what it does, which ``distill train --list-recipes`` prints. Recipes name
their models and data with ``package:`` and ``cache:`` (:mod:`distill_core.run.sources`).
"""

from __future__ import annotations

from difflib import get_close_matches
from importlib.resources import files
from pathlib import Path

PREFIX = "recipe:"


def recipes() -> dict[str, str]:
    """Every shipped recipe's name and its one-line description, by name."""
    found = {}
    for entry in sorted(files(__name__).iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".yaml"):
            lines = entry.read_text(encoding="utf-8").splitlines()
            found[entry.name.removesuffix(".yaml")] = lines[0].lstrip("# ").strip() if lines else ""
    return found


def recipe_path(name: str) -> Path:
    """The file of the shipped recipe ``name``.

    :raises LookupError: naming the recipes there are, and the closest to ``name``.
    """
    known = recipes()
    if name not in known:
        close = get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise LookupError(
            f"no recipe {name!r}{hint} The recipes are: {', '.join(known)} (distill train --list-recipes)"
        )
    return Path(str(files(__name__) / f"{name}.yaml"))
