"""``distill train RUN.yaml [--dry-run] [--resume] [section.field=value ...]``: the run file from the command line.

``RUN.yaml`` may be ``recipe:NAME``, a shipped recipe; ``--list-recipes`` lists them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_train_parser(sub: Any) -> None:
    """Add ``distill train`` to the ``distill`` command's subparsers."""
    train = sub.add_parser(
        "train",
        help="run the whole distillation a run file describes (docs/run-config.md)",
        description="Check the run file and everything it names without loading weights, then distil, evaluate "
        "on held-out data and export the student (save_pretrained layout) to training.output_dir/export.folder.",
    )
    train.add_argument(
        "run_file", nargs="?", help="the run file (.yaml, .yml or .json), or recipe:NAME for a shipped recipe"
    )
    train.add_argument("--list-recipes", action="store_true", help="list the shipped recipes (recipe:NAME) and stop")
    train.add_argument(
        "overrides",
        nargs="*",
        metavar="section.field=value",
        help="settings over the file's, e.g. optimization.learning_rate=1e-4 (values read as YAML)",
    )
    train.add_argument("--dry-run", action="store_true", help="check, print the plan and stop; no weights are loaded")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest full-state checkpoint in training.output_dir (a run that was stopped)",
    )
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from distill_core.run import RunFileError, train_from_file

    if args.list_recipes:
        from distill_core.run.recipes import recipes

        for name, description in recipes().items():
            print(f"recipe:{name:<24} {description}")
        return 0
    if args.run_file is None:
        print("error: name a run file (or recipe:NAME; distill train --list-recipes lists them)", file=sys.stderr)
        return 2
    try:
        train_from_file(args.run_file, overrides=args.overrides, dry_run=args.dry_run, resume=args.resume)
    except RunFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
