"""The command-line shell both demos share: parse, check, run, and turn errors into exit statuses."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from distill_core.demo.assets import MissingDependencyError


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    *,
    prepare: Callable[[argparse.Namespace], None],
    run: Callable[[argparse.Namespace], bool],
    usage_errors: tuple[type[Exception], ...] = (),
) -> int:
    """Parse ``argv``, ``prepare`` the options (fill defaults, check requirements), ``run`` the demo.

    A ``ValueError`` from ``prepare``, or one of ``usage_errors`` from ``run`` (an option the data
    rules out, found late), is a usage error (exit 2 with the parser's usage); a missing package or
    asset prints its install command and exits 2. With ``--check`` the exit status is 1 when the
    demo's verdict failed.
    """
    args: Any = parser.parse_args(list(argv))
    try:
        prepare(args)
    except ValueError as exc:
        parser.error(str(exc))
    except MissingDependencyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        passed = run(args)
    except MissingDependencyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except usage_errors as exc:
        parser.error(str(exc))
    return 1 if args.check and not passed else 0
