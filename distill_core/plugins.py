"""The plugin manager: entry-point loading (lazy), blocking, runtime registration.

Plugins are found in the ``distill`` entry-point group the first time something needs them, never
at import. Two environment variables steer loading (arguments of :func:`configure_plugins` do the
same from code):

- ``DISTILL_BLOCK_PLUGINS``: comma-separated entry-point names not to load (e.g. a broken plugin).
- ``DISTILL_PLUGIN_DISTRIBUTIONS``: comma-separated distribution names; only their entry points are
  loaded (tests use ``distill`` to run against the built-ins alone).

An entry point that fails to import is recorded here (``manager.failures``) and raised as
:class:`~distill_core.PluginLoadError` when the registry is built, naming the entry point, its
distribution, the error and the remedies; nothing runs with a plugin silently missing.

Scripts and tests may add plugin objects with ``get_plugin_manager().register(obj, name=...)`` and
remove them with ``unregister``; the registry notices and rebuilds itself.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from distill_core import hookspecs
from distill_core.errors import PluginLoadError
from distill_core.hookspecs import PROJECT_NAME

BLOCK_ENV = "DISTILL_BLOCK_PLUGINS"
DISTRIBUTIONS_ENV = "DISTILL_PLUGIN_DISTRIBUTIONS"


@dataclass(frozen=True)
class PluginOrigin:
    """Where a registered plugin came from."""

    plugin_name: str
    distribution: str
    version: str
    entry_point: str | None = None  # "name = module" for entry-point plugins


@dataclass(frozen=True)
class PluginFailure:
    """An entry point that could not be loaded."""

    entry_point: str
    distribution: str
    error: str

    @property
    def name(self) -> str:
        """The entry-point name, which is what blocking takes."""
        return self.entry_point.split("=")[0].strip()

    def message(self) -> str:
        return (
            f"plugin entry point {self.entry_point!r} of distribution {self.distribution!r} failed "
            f"to load: {self.error}. Fix or uninstall that distribution "
            f"(pip uninstall {self.distribution}), or block the plugin with {BLOCK_ENV}={self.name} "
            f"(from code: configure_plugins(blocked=[{self.name!r}]))"
        )


class DistillPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers each plugin's origin and counts registry-relevant changes."""

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.generation = 0
        self.origins: dict[int, PluginOrigin] = {}
        self.failures: list[PluginFailure] = []

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        if registered is not None:
            self.generation += 1
            if id(plugin) not in self.origins:
                version = str(getattr(plugin, "__version__", ""))
                self.origins[id(plugin)] = PluginOrigin(registered, "(registered at runtime)", version)
        return registered

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        removed = super().unregister(plugin, name)
        if removed is not None:
            self.generation += 1
            self.origins.pop(id(removed), None)
        return removed

    def origin_of(self, plugin: Any) -> PluginOrigin:
        origin = self.origins.get(id(plugin))
        if origin is None:
            return PluginOrigin(self.get_name(plugin) or repr(plugin), "(unknown)", "")
        return origin

    def load_entry_points(
        self,
        *,
        distributions: Iterable[str] | None = None,
        blocked: Iterable[str] = (),
    ) -> None:
        """Import and register every ``distill`` entry point, recording (not raising) failures.

        A failure is raised as :class:`PluginLoadError` when the registry is built (the first
        lookup, config validation or ``get_loss``); ``distill plugins`` lists the healthy plugins
        and reports it.
        """
        wanted = None if distributions is None else {_norm(d) for d in distributions}
        blocked = set(blocked)
        for name in blocked:
            self.set_blocked(name)
        seen: set[tuple[str, str]] = set()
        for entry_point in importlib_metadata.entry_points(group=PROJECT_NAME):
            dist = entry_point.dist
            dist_name = dist.metadata["Name"] if dist is not None else "(unknown)"
            dist_version = dist.version if dist is not None else ""
            if wanted is not None and _norm(dist_name) not in wanted:
                continue
            if entry_point.name in blocked or self.is_blocked(entry_point.name):
                continue
            key = (entry_point.name, entry_point.value)
            if key in seen or self.get_plugin(entry_point.name) is not None:
                continue  # the same distribution seen twice on sys.path
            seen.add(key)
            label = f"{entry_point.name} = {entry_point.value}"
            plugin = None
            try:
                plugin = entry_point.load()
                self.origins[id(plugin)] = PluginOrigin(entry_point.name, dist_name, dist_version, label)
                self.register(plugin, name=entry_point.name)
            except Exception as exc:  # any import-time error of third-party code
                if plugin is not None and self.get_name(plugin) is None:
                    self.origins.pop(id(plugin), None)
                self.failures.append(PluginFailure(label, dist_name, f"{type(exc).__name__}: {exc}"))

    def load_error(self) -> PluginLoadError | None:
        """Return the error that names every entry point that failed to load, or None if none did."""
        if not self.failures:
            return None
        if len(self.failures) == 1:
            return PluginLoadError(f"distill {self.failures[0].message()}")
        listed = "\n".join(f"  - {failure.message()}" for failure in self.failures)
        return PluginLoadError(f"{len(self.failures)} distill plugin entry points failed to load:\n{listed}")


def _norm(distribution: str) -> str:
    return distribution.lower().replace("_", "-").replace(".", "-")


def _split_env(variable: str) -> list[str] | None:
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


_lock = threading.Lock()
_manager: DistillPluginManager | None = None
_settings: dict[str, Any] = {"distributions": None, "blocked": ()}


def configure_plugins(*, distributions: Iterable[str] | None = None, blocked: Iterable[str] = ()) -> None:
    """Choose which entry points load; takes effect at the next :func:`get_plugin_manager` call.

    :param distributions: only load entry points of these distributions (None: all installed).
    :param blocked: entry-point names never to load, in addition to ``DISTILL_BLOCK_PLUGINS``.
    """
    global _manager
    with _lock:
        _settings["distributions"] = None if distributions is None else list(distributions)
        _settings["blocked"] = tuple(blocked)
        _manager = None


def get_plugin_manager() -> DistillPluginManager:
    """Return the process-wide plugin manager, loading entry points on first use."""
    global _manager
    manager = _manager
    if manager is not None:
        return manager
    with _lock:
        if _manager is None:
            distributions = _settings["distributions"]
            if distributions is None:
                distributions = _split_env(DISTRIBUTIONS_ENV)
            blocked = list(_settings["blocked"]) + (_split_env(BLOCK_ENV) or [])
            manager = DistillPluginManager()
            manager.load_entry_points(distributions=distributions, blocked=blocked)
            _manager = manager
        return _manager
