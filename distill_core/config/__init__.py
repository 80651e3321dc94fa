"""pydantic configs: TrainingConfig, DistillationConfig and the match / projection specs.

Every name (loss, projection, schedule) is checked against the live registry when a config is
built; errors carry the field path (``intermediate_matches.2.loss``). Configs are frozen: training
never mutates them (schedules live in the run state).

By concern: :mod:`~distill_core.config.common` (the base models, registry-name checks,
did-you-mean hints, dict / JSON helpers), :mod:`~distill_core.config.matches` (projections and
matches), :mod:`~distill_core.config.training` and :mod:`~distill_core.config.distillation`.
Import from ``distill_core.config``; the split is not part of the API.
"""

from __future__ import annotations

# write_text_atomic: configs were written through distill_core.config before distill_core.atomic existed
from distill_core.atomic import write_text_atomic
from distill_core.config.common import SECTIONS, is_sectioned, not_a_section, with_suggestions
from distill_core.config.distillation import TEXTBREWER_REPLACED, DistillationConfig
from distill_core.config.matches import FEATURES, CustomMatch, Feature, IntermediateMatch, LayerIndex, ProjectionSpec
from distill_core.config.training import TrainingConfig

# The seed documents use both spellings.
TrainConfig = TrainingConfig
DistillConfig = DistillationConfig

__all__ = [
    "FEATURES",
    "SECTIONS",
    "TEXTBREWER_REPLACED",
    "CustomMatch",
    "DistillConfig",
    "DistillationConfig",
    "Feature",
    "IntermediateMatch",
    "LayerIndex",
    "ProjectionSpec",
    "TrainConfig",
    "TrainingConfig",
    "is_sectioned",
    "not_a_section",
    "with_suggestions",
    "write_text_atomic",
]
