"""Docs that are generated from code stay in sync with it."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_config_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "docs" / "gen_config_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
