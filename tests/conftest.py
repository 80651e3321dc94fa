"""Shared fixtures. The suite runs hermetically against distill's built-in plugins only."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from distill_core import configure_plugins, get_plugin_manager

REPO = Path(__file__).resolve().parents[1]
BUILTINS_ONLY = {"DISTILL_PLUGIN_DISTRIBUTIONS": "distill"}


def pytest_configure(config: pytest.Config) -> None:
    configure_plugins(distributions=["distill"])
    # Tiny models run fastest on one thread, and two OpenMP threads spinning against another busy
    # process on a 2-core machine slow every step down by an order of magnitude.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Put torch back on one thread after each test: the demo sets its own thread count, and the
    resume tests compare results bitwise with a one-thread worker process."""
    yield
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture
def register_plugin() -> Iterator[Callable[[Any, str], Any]]:
    """Register plugin objects at runtime under a visible name; unregister them afterwards."""
    manager = get_plugin_manager()
    registered: list[Any] = []

    def register(plugin: Any, name: str) -> Any:
        manager.register(plugin, name=name)
        registered.append(plugin)
        return plugin

    try:
        yield register
    finally:
        for plugin in registered:
            if manager.is_registered(plugin):
                manager.unregister(plugin)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m distill_core ARGS`` in a subprocess, as a user's shell would."""
    full_env = {**os.environ, **BUILTINS_ONLY, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "distill_core", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=120,
    )
