"""The run file (DESIGN §11): one validated YAML or JSON file describes a whole distillation.

``distill train RUN.yaml`` and :func:`train_from_file` read it, check everything that can be
checked without loading weights (reporting every problem at once, with field paths), then distil
with the core API, evaluate on held-out data and export the student in the ``save_pretrained``
layout. The reference is docs/run-config.md.

By concern: :mod:`~distill_core.run.config` (the sections), :mod:`~distill_core.run.files`
(reading, overrides, problems), :mod:`~distill_core.run.checks` (the checks before weights),
:mod:`~distill_core.run.data` (records to labelled batches), :mod:`~distill_core.run.plan`,
:mod:`~distill_core.run.recipe`, :mod:`~distill_core.run.evaluate`, :mod:`~distill_core.run.export`
and :mod:`~distill_core.run.command` (the CLI).
"""

from __future__ import annotations

from distill_core.run.config import RunConfig
from distill_core.run.files import Problem, RunFileError
from distill_core.run.recipe import RunResult, prepare_run, train_from_file

__all__ = ["Problem", "RunConfig", "RunFileError", "RunResult", "prepare_run", "train_from_file"]
