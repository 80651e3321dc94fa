"""distill: knowledge distillation for PyTorch NLP models, as a pluggy plugin framework.

Plugins register in their own ``pyproject.toml``::

    [project.entry-points.distill]
    my_loss = "my_package.my_loss"

and mark hook implementations with ``from distill_core import hookimpl``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from distill_core.components import ComponentInfo
from distill_core.config import (
    CustomMatch,
    DistillationConfig,
    DistillConfig,
    IntermediateMatch,
    ProjectionSpec,
    TrainConfig,
    TrainingConfig,
)
from distill_core.errors import (
    AdaptorError,
    CheckpointError,
    DistillError,
    DuplicateComponentError,
    NonFiniteLossError,
    PluginError,
    PluginLoadError,
    ShapeMismatchError,
    UnknownComponentError,
)
from distill_core.hookspecs import PROJECT_NAME, hookimpl, hookspec
from distill_core.plugins import configure_plugins, get_plugin_manager
from distill_core.registry import get_loss, get_projection, get_registry, list_components

try:
    from importlib.metadata import version as _version

    __version__ = _version("distill")
except Exception:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# The distillers pull in torch-heavy modules; load them on first access.
_LAZY = {
    "BasicTraining": "distill_core.distillers",
    "BasicDistillation": "distill_core.distillers",
    "Distillation": "distill_core.distillers",
    "GeneralDistiller": "distill_core.distillers",
    "MultiTeacherDistillation": "distill_core.distillers",
    "BasicMultiTeacherDistillation": "distill_core.distillers",
    "MultiTaskDistillation": "distill_core.distillers",
    # TextBrewer's class names
    "BasicTrainer": "distill_core.distillers",
    "BasicDistiller": "distill_core.distillers",
    "MultiTeacherDistiller": "distill_core.distillers",
    "MultiTaskDistiller": "distill_core.distillers",
    "auto_adaptor": "distill_core.adaptors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'distill_core' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "PROJECT_NAME",
    "AdaptorError",
    "CheckpointError",
    "ComponentInfo",
    "CustomMatch",
    "DistillConfig",
    "DistillError",
    "DistillationConfig",
    "DuplicateComponentError",
    "IntermediateMatch",
    "NonFiniteLossError",
    "PluginError",
    "PluginLoadError",
    "ProjectionSpec",
    "ShapeMismatchError",
    "TrainConfig",
    "TrainingConfig",
    "UnknownComponentError",
    "__version__",
    "configure_plugins",
    "get_loss",
    "get_plugin_manager",
    "get_projection",
    "get_registry",
    "hookimpl",
    "hookspec",
    "list_components",
    *_LAZY,
]
