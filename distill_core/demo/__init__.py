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
- :mod:`~distill_core.demo.lm`: ``distill demo --task lm``, SmolLM2-135M distilled into a small LM.
"""

from __future__ import annotations

from collections.abc import Sequence


TASKS = ("classify", "lm")


def split_task(argv: Sequence[str]) -> tuple[str, list[str]]:
    """Return the ``--task`` of ``distill demo`` ARGV (default ``classify``) and the other arguments.

    Each task has its own options, so the task is taken out before its parser sees the rest.
    An unknown task is left in place for the classification parser to reject with its choices.

    >>> split_task(["--task", "lm", "--steps", "5"])
    ('lm', ['--steps', '5'])
    """
    args = list(argv)
    if args[:1] == ["--"]:  # `distill demo -- --task lm`: the separator is not ours
        args = args[1:]
    for index, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--task" and index + 1 < len(args) and args[index + 1] in TASKS:
            return args[index + 1], args[:index] + args[index + 2:]
        if arg.startswith("--task=") and arg.split("=", 1)[1] in TASKS:
            return arg.split("=", 1)[1], args[:index] + args[index + 1:]
    return "classify", args


def run_demo_cli(argv: Sequence[str] | None = None) -> int:
    """Run ``distill demo ARGV``; return the exit status (see ``distill demo --help``).

    ``--task lm`` runs the language-model demo (``distill demo --task lm --help``); otherwise the
    classification demo.
    """
    import sys

    task, rest = split_task(sys.argv[1:] if argv is None else argv)
    if task == "lm":
        from distill_core.demo.lm import run_lm_demo_cli

        return run_lm_demo_cli(rest)
    from distill_core.demo.cli import run_demo_cli as run

    return run(rest)


__all__ = ["run_demo_cli"]
