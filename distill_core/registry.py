"""The component registry: names -> the implementation of the plugin that provides them.

Built from the plugin manager the first time a name is looked up (and rebuilt when plugins are
registered or unregistered at runtime). Each name is bound once to its provider's hook function, so
the training step calls that function directly and never scans all plugins.

A component may have aliases (``gram`` is also ``fsp``): a lookup by alias returns the same
:class:`Component`, whose hook is always called with the canonical name. A plugin entry point that
failed to import makes building the registry raise :class:`PluginLoadError` (``distill plugins``
lists the healthy plugins anyway, with ``allow_load_failures=True``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from distill_core import hookspecs
from distill_core.components import COMPONENT_KINDS, ComponentInfo
from distill_core.errors import DuplicateComponentError, PluginError, UnknownComponentError, close_names
from distill_core.plugins import BLOCK_ENV, DistillPluginManager, get_plugin_manager

#: which hook computes each kind of component
HOOK_OF_KIND = {
    "kd_loss": "compute_kd_loss",
    "aligned_kd_loss": "compute_aligned_kd_loss",
    "match_loss": "compute_match_loss",
    "projection": "build_projection",
}
#: each hook's arguments in the specification's order (a plugin may take fewer, pluggy style)
HOOK_ARGNAMES = {
    kind: tuple(inspect.signature(getattr(hookspecs, hook)).parameters) for kind, hook in HOOK_OF_KIND.items()
}
KIND_LABEL = {
    "kd_loss": "KD loss",
    "aligned_kd_loss": "aligned KD loss",
    "match_loss": "match loss",
    "projection": "projection",
}
KIND_PLURAL = {
    "kd_loss": "KD losses",
    "aligned_kd_loss": "aligned KD losses",
    "match_loss": "match losses",
    "projection": "projections",
}
LISTING_HINT = "Run `distill plugins` to list every installed component."


@dataclass(frozen=True)
class Component:
    """A registered component, bound to the hook function of the plugin that declared it."""

    kind: str
    name: str
    params_model: type[BaseModel] | None
    summary: str
    plugin: str
    distribution: str
    version: str
    function: Callable[..., Any] = field(repr=False)
    argnames: tuple[str, ...] = field(repr=False)
    aliases: tuple[str, ...] = ()

    def call(self, **kwargs: Any) -> Any:
        """Call the provider's hook function with the arguments its signature asks for.

        The hook receives this component's canonical ``name``, also when a config named it by an alias.
        """
        kwargs["name"] = self.name
        return self._checked(self.function(*[kwargs[arg] for arg in self.argnames]))

    def call_in_order(self, *args: Any) -> Any:
        """:meth:`call` with the hook's arguments after ``name``, in the specification's order.

        The training step's path: a hook function that takes every argument is called directly.
        """
        spec = HOOK_ARGNAMES[self.kind]
        if self.argnames == spec:
            return self._checked(self.function(self.name, *args))
        return self.call(**dict(zip(spec[1:], args)))

    def _checked(self, result: Any) -> Any:
        if result is None:
            raise PluginError(
                f"plugin {self.plugin!r} ({self.distribution}) declares {KIND_LABEL[self.kind]} "
                f"{self.name!r} but its {HOOK_OF_KIND[self.kind]} hook returned None for it"
            )
        return result

    def validate_params(self, params: BaseModel | dict[str, Any] | None) -> BaseModel | None:
        """Return ``params`` validated by this component's params model."""
        if self.params_model is None:
            if params:
                raise ValueError(
                    f"{KIND_LABEL[self.kind]} {self.name!r} takes no params but got "
                    f"{sorted(params if isinstance(params, dict) else params.model_dump())}"
                )
            return None
        if isinstance(params, self.params_model):
            return params
        if isinstance(params, BaseModel):
            params = params.model_dump()
        return self.params_model.model_validate(params or {})

    def describe(self) -> dict[str, Any]:
        """The JSON-ready description `distill plugins --json` prints."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "kind": self.kind,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "summary": self.summary,
            "params": None if self.params_model is None else self.params_model.model_json_schema(),
        }


class Registry:
    """Components by kind and name, built from a plugin manager."""

    def __init__(self, manager: DistillPluginManager) -> None:
        self.manager = manager
        self.generation = manager.generation
        self._by_kind: dict[str, dict[str, Component]] = {kind: {} for kind in COMPONENT_KINDS}
        #: every name a config may use (canonical names and aliases) -> the component
        self._by_any_name: dict[str, dict[str, Component]] = {kind: {} for kind in COMPONENT_KINDS}
        self._build()

    def _hook_functions(self, hook_name: str) -> dict[int, Any]:
        hook = getattr(self.manager.hook, hook_name)
        return {id(impl.plugin): impl for impl in hook.get_hookimpls()}

    def _build(self) -> None:
        impls = {kind: self._hook_functions(hook) for kind, hook in HOOK_OF_KIND.items()}
        for declaration in self.manager.hook.declare_components.get_hookimpls():
            origin = self.manager.origin_of(declaration.plugin)
            where = f"plugin {origin.plugin_name!r} of distribution {origin.distribution!r}"
            try:
                declared = declaration.function()
            except Exception as exc:
                raise PluginError(f"declare_components() of {where} raised {exc!r}") from exc
            if not isinstance(declared, (list, tuple)) or not all(isinstance(info, ComponentInfo) for info in declared):
                raise PluginError(
                    f"declare_components() of {where} must return a list of ComponentInfo, got {declared!r}"
                )
            for info in declared:
                impl = impls[info.kind].get(id(declaration.plugin))
                if impl is None:
                    raise PluginError(
                        f"{where} declares {KIND_LABEL[info.kind]} {info.name!r} but implements no "
                        f"{HOOK_OF_KIND[info.kind]} hook; add a @hookimpl def "
                        f"{HOOK_OF_KIND[info.kind]}(...) to it"
                    )
                component = Component(
                    kind=info.kind,
                    name=info.name,
                    params_model=info.params,
                    summary=info.summary,
                    plugin=origin.plugin_name,
                    distribution=origin.distribution,
                    version=origin.version,
                    function=impl.function,
                    argnames=tuple(impl.argnames) + tuple(impl.kwargnames),
                    aliases=info.aliases,
                )
                self._add(component, where)

    def _add(self, component: Component, where: str) -> None:
        """Register ``component`` under its name and aliases; a name taken (as either) is a duplicate."""
        taken = self._by_any_name[component.kind]
        for name in (component.name, *component.aliases):
            existing = taken.get(name)
            if existing is None:
                continue
            as_what = "" if name == existing.name else f" (as an alias of {existing.name!r})"
            by_new = "" if name == component.name else f" (as an alias of {component.name!r})"
            raise DuplicateComponentError(
                f"{KIND_LABEL[component.kind]} {name!r} is declared twice: by plugin {existing.plugin!r} of "
                f"distribution {existing.distribution!r}{as_what} and by {where}{by_new}. Uninstall one of the "
                f"two distributions, or block one plugin with {BLOCK_ENV}=<plugin name> (or "
                f"configure_plugins(blocked=[...]))."
            )
        self._by_kind[component.kind][component.name] = component
        for name in (component.name, *component.aliases):
            taken[name] = component

    def names(self, kind: str, *, aliases: bool = False) -> list[str]:
        """Return the sorted canonical names of ``kind``; with ``aliases=True``, every accepted name."""
        return sorted(self._by_any_name[kind] if aliases else self._by_kind[kind])

    def components(self) -> list[Component]:
        """Return every component once (aliases are attributes of their component), by kind and name."""
        return [self._by_kind[kind][name] for kind in COMPONENT_KINDS for name in self.names(kind)]

    def has(self, kind: str, name: str) -> bool:
        """Whether ``name`` (a canonical name or an alias) is a registered component of ``kind``."""
        return name in self._by_any_name[kind]

    def get(self, kind: str, name: str) -> Component:
        """Return component ``name`` (or the one ``name`` is an alias of), or raise an error that helps fix the name."""
        try:
            return self._by_any_name[kind][name]
        except (KeyError, TypeError):
            raise UnknownComponentError(self.unknown_message(kind, name)) from None

    def unknown_message(self, kind: str, name: object) -> str:
        label = KIND_LABEL[kind]
        parts = [f"unknown {label} {name!r}"]
        close = close_names(name, self.names(kind, aliases=True), n=3)
        if close:
            parts[0] += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        other = [k for k in COMPONENT_KINDS if k != kind and self.has(k, name)] if isinstance(name, str) else []
        if other:
            parts.append(f"{name!r} is a {KIND_LABEL[other[0]]}, not a {label}.")
        registered = [
            component.name + (f" (alias {', '.join(component.aliases)})" if component.aliases else "")
            for component in (self._by_kind[kind][n] for n in self.names(kind))
        ]
        parts.append(f"Registered {KIND_PLURAL[kind]}: {', '.join(registered) or '(none)'}.")
        for failure in self.manager.failures:
            parts.append(f"Note: {failure.message()}.")
        parts.append(LISTING_HINT)
        return " ".join(parts)


_cache: dict[str, Registry] = {}


def get_registry(*, allow_load_failures: bool = False) -> Registry:
    """Return the registry of the current plugin manager, rebuilding it if plugins changed.

    :param allow_load_failures: return the registry of the plugins that loaded even if an entry
        point failed to import (what ``distill plugins`` lists); by default that is an error.
    :raises PluginLoadError: an entry point of group ``distill`` failed to import; the message names
        it, its distribution, the error and the remedies (fix or uninstall it, or block it with
        ``DISTILL_BLOCK_PLUGINS``).
    """
    manager = get_plugin_manager()
    failure = None if allow_load_failures else manager.load_error()
    if failure is not None:
        raise failure
    registry = _cache.get("registry")
    if registry is None or registry.manager is not manager or registry.generation != manager.generation:
        registry = Registry(manager)
        _cache["registry"] = registry
    return registry


def list_components() -> list[Component]:
    """Return every registered component (all kinds), sorted by kind and name."""
    return get_registry().components()


def _find_loss(name: str, kind: str | None) -> Component:
    registry = get_registry()
    if kind is not None:
        return registry.get(kind, name)
    kinds = ("kd_loss", "aligned_kd_loss", "match_loss")
    found = [registry.get(k, name) for k in kinds if registry.has(k, name)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        labels = " and ".join(KIND_LABEL[component.kind] for component in found)
        options = " or ".join(f"kind={component.kind!r}" for component in found)
        raise UnknownComponentError(f"loss {name!r} is a {labels}; pass {options}")
    raise UnknownComponentError(registry.unknown_message("match_loss", name))


def get_loss(name: str, *, kind: str | None = None, **params: Any) -> Callable[..., Any]:
    """Return a callable ``loss(student, teacher, mask=None, *, temperature=None)`` for ``name``.

    ``params`` are validated by the component's params model. ``temperature`` is for KD losses only
    (default 1.0). For an aligned KD loss (different tokenizers) the callable is
    ``loss(student, teacher, alignment, *, temperature=None)``, ``alignment`` a
    :class:`~distill_core.cross_tokenizer.TokenAlignment`.
    """
    component = _find_loss(name, kind)
    try:
        validated = component.validate_params(params)
    except ValidationError as exc:
        raise ValueError(f"invalid params for {KIND_LABEL[component.kind]} {name!r}: {exc}") from exc

    if component.kind == "kd_loss":

        def kd_loss(student: Any, teacher: Any, mask: Any = None, *, temperature: Any = None) -> Any:
            return component.call(
                name=name,
                logits_S=student,
                logits_T=teacher,
                temperature=1.0 if temperature is None else temperature,
                mask=mask,
                params=validated,
            )

        kd_loss.__name__ = name
        return kd_loss

    if component.kind == "aligned_kd_loss":

        def aligned_kd_loss(student: Any, teacher: Any, alignment: Any, *, temperature: Any = None) -> Any:
            return component.call(
                name=name,
                logits_S=student,
                logits_T=teacher,
                alignment=alignment,
                temperature=1.0 if temperature is None else temperature,
                params=validated,
            )

        aligned_kd_loss.__name__ = name
        return aligned_kd_loss

    def match_loss(student: Any, teacher: Any, mask: Any = None, *, temperature: Any = None) -> Any:
        if temperature is not None:
            raise TypeError(f"match loss {name!r} takes no temperature (only KD losses do)")
        return component.call(name=name, feature_S=student, feature_T=teacher, mask=mask, params=validated)

    match_loss.__name__ = name
    return match_loss


def get_projection(name: str, dim_in: int, dim_out: int, **params: Any) -> Any:
    """Return a new projection module ``name`` mapping width ``dim_in`` to ``dim_out``."""
    import torch.nn as nn

    component = get_registry().get("projection", name)
    try:
        validated = component.validate_params(params)
    except ValidationError as exc:
        raise ValueError(f"invalid params for projection {name!r}: {exc}") from exc
    module = component.call(name=name, dim_in=dim_in, dim_out=dim_out, params=validated)
    if not isinstance(module, nn.Module):
        raise PluginError(
            f"projection {name!r} of plugin {component.plugin!r} ({component.distribution}) returned "
            f"{type(module).__name__}, expected a torch.nn.Module"
        )
    return module
