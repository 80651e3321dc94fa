"""The teacher-output cache: pay for the teacher's forward once, then read its outputs back.

``DistillationConfig(teacher_cache=...)`` turns it on. The loop then gives every batch the dataset
indices of its examples (:mod:`.keys`); the distiller looks each example up, runs the teachers only
for the examples it misses, stores what the configured losses read (:mod:`.layout` says what an
entry holds, :mod:`.encoder` makes entries and rebuilds batches from them, :mod:`.topk` dense or
top-k token logits) in memory or in memory-mapped files (:mod:`.store`), and checks every
entry against a fingerprint of the teacher, the output selection and the example's content
(:mod:`.fingerprint`). :mod:`.cache` ties these together; ``distill cache info DIR`` reads a cache
directory without loading any model (:mod:`.info`). The user-facing account is
docs/teacher-cache.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from distill_core.teacher_cache.config import TeacherCacheConfig

# config.py imports this package for TeacherCacheConfig; the rest loads on first use.
_LAZY = {
    "TeacherCache": "distill_core.teacher_cache.cache",
    "CacheStats": "distill_core.teacher_cache.cache",
    "TeacherRows": "distill_core.teacher_cache.topk",
    "KeyedLoader": "distill_core.teacher_cache.keys",
    "ExampleKeys": "distill_core.teacher_cache.keys",
    "describe_cache": "distill_core.teacher_cache.info",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'distill_core.teacher_cache' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = ["TeacherCacheConfig", *_LAZY]
