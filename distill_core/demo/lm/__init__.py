"""``distill demo --task lm``: SmolLM2-135M-Instruct distilled into a small student, on a CPU, offline.

Importing this package is cheap; the entry point checks for transformers, gguf, accelerate and
matplotlib and prints the install command when one is missing.

- :mod:`~distill_core.demo.lm.models`: the packaged teacher (dequantised once, cached), students cut from it.
- :mod:`~distill_core.demo.lm.data`: BBC News articles as fixed-length token blocks, train and held-out.
- :mod:`~distill_core.demo.lm.train`: distillation (token KD, optionally on-policy) and the plain baseline.
- :mod:`~distill_core.demo.lm.measure`, :mod:`~distill_core.demo.lm.report`: perplexity, agreement,
  latency, the table and the plot.
- :mod:`~distill_core.demo.lm.runner`: the whole run.
"""

from __future__ import annotations

from collections.abc import Sequence


def run_lm_demo_cli(argv: Sequence[str] | None = None) -> int:
    """Run ``distill demo --task lm ARGV``; return the exit status (see ``distill demo --task lm --help``)."""
    from distill_core.demo.lm.cli import run_lm_demo_cli as run

    return run(argv)


__all__ = ["run_lm_demo_cli"]
