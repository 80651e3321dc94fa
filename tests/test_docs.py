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
    from distill_core.demo.cpus import DEMO_THREADS
    from distill_core.demo.teacher_store import teacher_key

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    demo = (REPO / "docs" / "demo.md").read_text(encoding="utf-8")
    install = re.search(r"```bash\n(pip install torch[^\n]+)\n```", readme)
    assert install is not None, "the README's install command"
    assert install.group(1) in demo
    rt = DEFAULTS["rt"]
    key = teacher_key(dataset="rt", train_size=rt["train_size"], max_length=rt["max_length"], seed=0,
                      steps=rt["teacher_steps"], lr=rt["teacher_lr"], batch_size=rt["batch_size"],
                      threads=DEMO_THREADS)
    assert f"teachers/{key}/" in demo


def test_every_page_that_shows_the_tensorboard_command_says_how_to_install_it() -> None:
    """distill writes logs with tensorboardX; the `tensorboard` viewer the docs point to is not a dependency."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert [requirement.split(">")[0] for requirement in extras["tensorboard"]] == ["tensorboard"]
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    showing = [page for page in pages if "tensorboard --logdir" in page.read_text(encoding="utf-8")]
    assert {page.name for page in showing} >= {"README.md", "quickstart.md", "demo.md"}
    for page in showing:
        assert "pip install tensorboard" in page.read_text(encoding="utf-8"), page.name


def test_the_demo_says_how_to_get_the_viewer_only_when_it_is_missing(monkeypatch) -> None:
    import importlib.util
    from pathlib import Path

    from distill_core.demo.report import tensorboard_line

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # as without the tensorboard package
    assert tensorboard_line(Path("out/logs")) == (
        "TensorBoard logs: tensorboard --logdir out/logs (the viewer: pip install tensorboard)"
    )
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert tensorboard_line(Path("out/logs")) == "TensorBoard logs: tensorboard --logdir out/logs"
