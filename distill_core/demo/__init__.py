"""``distill demo`` and the building blocks the examples share.

Importing this package is cheap and needs neither transformers nor matplotlib; the entry point
checks for them and prints the install command when one is missing.

- :mod:`~distill_core.demo.assets`: the packaged model and corpora, found without importing them.
- :mod:`~distill_core.demo.data`: Rotten Tomatoes and BBC News with fixed seeded splits.
- :mod:`~distill_core.demo.batches`: tokenisation and dynamic-padding batches.
- :mod:`~distill_core.demo.models`: loading the MiniLM teacher, cutting students out of it.
- :mod:`~distill_core.demo.pipeline`: fine-tuning and distillation through distill's public API.
- :mod:`~distill_core.demo.measure`, :mod:`~distill_core.demo.report`: accuracy, latency, table, plot.
- :mod:`~distill_core.demo.teacher_store`: fine-tuned teachers kept between runs (whole models;
  not the teacher-output cache of :mod:`distill_core.teacher_cache`).
"""

from __future__ import annotations

from collections.abc import Sequence


def run_demo_cli(argv: Sequence[str] | None = None) -> int:
    """Run ``distill demo ARGV``; return the exit status (see ``distill demo --help``)."""
    from distill_core.demo.cli import run_demo_cli as run

    return run(argv)


__all__ = ["run_demo_cli"]
