"""distill_core.adaptors: one package whose modules import one way and that needs no distiller."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import distill_core.adaptors
import distill_core.model_adaptors
from distill_core.adaptors import auto
from distill_core.modules import unwrap
from tests.conftest import REPO

PACKAGE = "distill_core.adaptors"
PACKAGE_DIR = REPO / "distill_core" / "adaptors"
# The graph the package's docstring describes: who imports whom inside the package.
LAYERS = {
    "contract": set(),
    "checks": {"contract", "logits"},
    "auto": {"contract", "kinds"},
    "kinds": set(),
    "bound": {"contract", "auto"},
    "logits": set(),
    "first_step": {"contract", "checks", "logits"},
}
# What the package may read from the rest of distill_core: neither imports anything back.
OUTSIDE = {"distill_core.errors", "distill_core.modules", "distill_core.step"}


def _imported_modules(path: Path) -> list[tuple[str, bool]]:
    """The distill_core modules ``path`` imports, each with whether the import is at module level.

    ``from distill_core.adaptors import contract`` counts as the submodule; ``from
    distill_core.adaptors import as_list`` as the package itself (its ``__init__``).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    # imports for type checkers only (``if TYPE_CHECKING:``) never run, so they cannot close a cycle
    type_only = {
        id(inner)
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    submodules = {file.stem for file in PACKAGE_DIR.glob("*.py")}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this package
                base = PACKAGE.rsplit(".", node.level - 1)[0] if node.level > 1 else PACKAGE
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == PACKAGE:
                names = [f"{PACKAGE}.{a.name}" if a.name in submodules else PACKAGE for a in node.names]
            else:
                names = [module]
        else:
            continue
        found.extend((name, id(node) in top_level) for name in names if name.startswith("distill_core"))
    return found


def _package_graph() -> dict[str, set[str]]:
    """Each package module (by file stem, ``__init__`` for the package) and the package modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        targets = {name for name, _ in _imported_modules(path) if name == PACKAGE or name.startswith(PACKAGE + ".")}
        graph[path.stem] = {"__init__" if name == PACKAGE else name.rsplit(".", 1)[1] for name in targets}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as a path (first node repeated at the end), or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node) :] + [node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_find_cycle_reports_a_cycle() -> None:
    """The checker below can fail: the import cycle this package replaced is found."""
    assert _find_cycle({"adaptors": {"model_adaptors"}, "model_adaptors": {"adaptors"}}) == [
        "adaptors",
        "model_adaptors",
        "adaptors",
    ]
    assert _find_cycle(LAYERS) is None


def test_no_module_of_the_package_imports_another_in_a_cycle() -> None:
    graph = _package_graph()
    assert _find_cycle(graph) is None, graph
    submodules = {stem: targets for stem, targets in graph.items() if stem != "__init__"}
    assert submodules == LAYERS, "the package's docstring describes this graph; update both together"
    assert graph["__init__"] == set(LAYERS)


@pytest.mark.parametrize("stem", sorted(LAYERS))
def test_imports_are_at_module_level_and_reach_only_errors_and_modules_outside(stem: str) -> None:
    """No import deferred into a function (what hid the old cycle); nothing else of distill_core."""
    imports = _imported_modules(PACKAGE_DIR / f"{stem}.py")
    assert [name for name, top_level in imports if not top_level] == []
    outside = {name for name, _ in imports if not name.startswith(PACKAGE)}
    assert outside <= OUTSIDE
    for name in OUTSIDE:  # they import no distill_core module, so they cannot close a cycle
        path = REPO / Path(*name.split(".")).with_suffix(".py")
        assert [module for module, _ in _imported_modules(path)] == []


def _fresh_import(module: str) -> list[str]:
    """Import ``module`` first in a new interpreter; return the distill_core modules it loaded."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    code = f"import sys, {module}; print('\\n'.join(name for name in sys.modules if name.startswith('distill_core')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("module", ["distill_core.adaptors", "distill_core.model_adaptors"])
def test_the_adaptors_import_first_without_the_training_machinery(module: str) -> None:
    loaded = _fresh_import(module)
    assert {f"{PACKAGE}.{stem}" for stem in LAYERS} <= set(loaded)
    for heavy in ("distill_core.distillers", "distill_core.loop", "distill_core.runtime"):
        assert [name for name in loaded if name == heavy or name.startswith(heavy + ".")] == []


def _defined_public_names(path: Path) -> set[str]:
    """Names a module defines at its top level (functions, classes, constants, type aliases), not ``_private``."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if not name.startswith("_")}


@pytest.mark.parametrize("stem", sorted(LAYERS))
def test_the_package_exports_every_public_name_of_its_modules(stem: str) -> None:
    defined = _defined_public_names(PACKAGE_DIR / f"{stem}.py")
    assert defined, stem
    assert defined <= set(distill_core.adaptors.__all__)
    module = sys.modules[f"{PACKAGE}.{stem}"]
    assert all(getattr(distill_core.adaptors, name) is getattr(module, name) for name in defined)


def test_model_adaptors_is_the_automatic_adaptors_under_their_old_name() -> None:
    for name in distill_core.model_adaptors.__all__:
        if name == "unwrap_model":
            assert distill_core.model_adaptors.unwrap_model is unwrap
        else:
            assert getattr(distill_core.model_adaptors, name) is getattr(auto, name)
