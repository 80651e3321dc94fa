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


def test_demo_docs_install_like_the_readme_and_show_the_default_teacher_key() -> None:
    """docs/demo.md is where a new user starts the demo: same install command as the README, real key."""
    import re

    from distill_core.demo.cli import DEFAULTS
    from distill_core.demo.teacher_store import teacher_key

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    demo = (REPO / "docs" / "demo.md").read_text(encoding="utf-8")
    install = re.search(r"```bash\n(pip install torch[^\n]+)\n```", readme)
    assert install is not None, "the README's install command"
    assert install.group(1) in demo
    rt = DEFAULTS["rt"]
    key = teacher_key(dataset="rt", train_size=rt["train_size"], max_length=rt["max_length"], seed=0,
                      steps=rt["teacher_steps"], lr=rt["teacher_lr"], batch_size=rt["batch_size"])
    assert f"teachers/{key}/" in demo
