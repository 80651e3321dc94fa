"""``python -m distill_core`` is the ``distill`` command."""

from distill_core.cli import main

raise SystemExit(main())
