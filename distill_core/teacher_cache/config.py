"""``DistillationConfig.teacher_cache``: where teacher outputs are stored and in what form.

Kept apart from :mod:`distill_core.config` (which imports it) so this package's heavier modules
load only when a cache is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MEMORY = "memory"


class TeacherCacheConfig(BaseModel):
    """The teacher-output cache: stored teacher outputs stand in for the teacher's forward pass.

    Only what the configured losses read is stored, per example, keyed by the example's index in
    the dataset (docs/teacher-cache.md). Given as a dict, or as a string: the ``location`` alone.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    location: str = Field(
        MEMORY,
        min_length=1,
        description="'memory' (this process, lost when it ends) or a directory: memory-mapped files that later "
        "runs reuse and a killed run continues",
    )
    top_k: int | None = Field(
        None,
        ge=1,
        description="store the k largest log-probabilities of each position's token logits (B, L, V), their "
        "indices and the remaining mass instead of all V logits; None: the logits themselves (exact for any "
        "temperature)",
    )
    missing_mass: Literal["spread", "zero"] = Field(
        "zero",
        description="top-k: the mass outside the top k dropped, the top k renormalised ('zero'), or spread evenly "
        "over the other entries ('spread'); 'zero' distilled an LM better (docs/teacher-cache.md)",
    )
    value_dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16",
        description="top-k: dtype of the stored log-probabilities and mass (bfloat16: 2 bytes each, about 3 "
        "significant digits; float32: exact to float rounding)",
    )
    on_stale: Literal["error", "rebuild"] = Field(
        "error",
        description="a stored cache built for another teacher, output selection or example content: refuse "
        "with the reason ('error'), or rebuild what is stale ('rebuild')",
    )

    @model_validator(mode="before")
    @classmethod
    def _location_alone(cls, data: Any) -> Any:
        if isinstance(data, (str, os.PathLike)):
            return {"location": os.fspath(data)}
        return data

    @field_validator("location")
    @classmethod
    def _creatable(cls, location: str) -> str:
        if location == MEMORY:
            return location
        path = Path(location).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"teacher cache location {location!r} exists and is not a directory; choose a directory")
        parent = path
        while not parent.exists():  # the nearest existing ancestor decides whether it can be created
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(
                f"teacher cache location {location!r} cannot be created: {str(parent)!r} is not a writable "
                f"directory; choose a directory you can write (or 'memory')"
            )
        return location

    @property
    def on_disk(self) -> bool:
        return self.location != MEMORY
