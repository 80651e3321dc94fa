"""What a plugin declares about each component it provides."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

ComponentKind = Literal["kd_loss", "aligned_kd_loss", "match_loss", "projection"]
COMPONENT_KINDS: tuple[str, ...] = ("kd_loss", "aligned_kd_loss", "match_loss", "projection")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class ComponentInfo:
    """One named component a plugin provides.

    :param kind: ``"kd_loss"``, ``"aligned_kd_loss"`` (teacher and student with different
        tokenizers), ``"match_loss"`` or ``"projection"``.
    :param name: the registry name configs use, e.g. ``"hidden_mse"``.
    :param params: a pydantic model class for the component's options, or None if it takes none.
    :param summary: one line shown by ``distill plugins``.
    :param aliases: other names for the same component (e.g. ``("fsp",)`` for ``"gram"``). A config
        may use any of them; the registry resolves an alias to the component, calls its hook with
        the canonical ``name``, and lists it once, with its aliases. An alias taken by another
        component of the same kind is a duplicate, like a name.
    """

    kind: ComponentKind
    name: str
    params: type[BaseModel] | None = None
    summary: str = ""
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in COMPONENT_KINDS:
            raise ValueError(
                f"Expected ComponentInfo `kind` to be one of {', '.join(COMPONENT_KINDS)} "
                f"but got {self.kind!r} (component {self.name!r})"
            )
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(
                f"Expected ComponentInfo `name` to start with a letter and hold only letters, digits, "
                f"'_', '.' or '-' but got {self.name!r}"
            )
        aliases = (self.aliases,) if isinstance(self.aliases, str) else tuple(self.aliases)
        for alias in aliases:
            if not isinstance(alias, str) or not _NAME_RE.match(alias):
                raise ValueError(
                    f"Expected each alias of ComponentInfo {self.name!r} to start with a letter and hold only "
                    f"letters, digits, '_', '.' or '-' but got {alias!r}"
                )
        if self.name in aliases or len(set(aliases)) != len(aliases):
            raise ValueError(
                f"Expected the aliases of ComponentInfo {self.name!r} to differ from its name and from each other "
                f"but got {list(aliases)!r}"
            )
        object.__setattr__(self, "aliases", aliases)  # frozen: a list given by a plugin is stored as a tuple
        if self.params is not None and not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            raise TypeError(
                f"Expected ComponentInfo `params` of {self.name!r} to be a pydantic BaseModel "
                f"subclass or None but got {self.params!r}"
            )
