"""Kept for code that imported the automatic adaptors from here: they live in distill_core.adaptors.

``from distill_core.adaptors import auto_adaptor_for, model_kind, ...`` is the import to use.
``unwrap_model`` is :func:`distill_core.modules.unwrap`, the one unwrap helper.
"""

from __future__ import annotations

from distill_core.adaptors import auto, kinds
from distill_core.adaptors.auto import *  # noqa: F403 (this module is only a second name for them)
from distill_core.adaptors.kinds import *  # noqa: F403
from distill_core.modules import unwrap as unwrap_model

__all__ = [*kinds.__all__, *auto.__all__, "unwrap_model"]
