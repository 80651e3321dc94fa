"""The example third-party plugin, installed for real with pip and used exactly as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "plugin-example"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """pip-install examples/plugin-example into its own folder (an isolated site directory)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-cache-dir",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=build,
    )
    assert list(target.glob("distill_cka-*.dist-info")), "pip did not install the example's metadata"
    return target


def _env(site: Path, distributions: str) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "DISTILL_PLUGIN_DISTRIBUTIONS": distributions}


def test_installed_plugin_is_listed_with_its_distribution(installed_example) -> None:
    result = run_cli("plugins", "--json", env=_env(installed_example, "distill,distill-cka"))
    assert result.returncode == 0, result.stderr
    listed = {item["name"]: item for item in json.loads(result.stdout)}
    assert listed["cka"]["distribution"] == "distill-cka"
    assert listed["cka"]["version"] == "0.1.0"
    assert listed["cka"]["kind"] == "match_loss"
    assert listed["cka"]["params"]["properties"]["per_example"]["default"] is False
    assert listed["hidden_mse"]["distribution"] == "distill"


def test_installed_plugin_validates_and_computes(installed_example, tmp_path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "intermediate_matches": [
                    {"layer_T": 4, "layer_S": 1, "feature": "hidden", "loss": "cka", "params": {"per_example": True}}
                ]
            }
        )
    )
    result = run_cli("validate", str(config), env=_env(installed_example, "distill,distill-cka"))
    assert result.returncode == 0, result.stderr
    # without the plugin the same config names the missing loss
    result = run_cli("validate", str(config), env=_env(installed_example, "distill"))
    assert result.returncode == 1 and "unknown match loss 'cka'" in result.stderr

    script = textwrap.dedent("""
        import torch
        from distill_core import get_loss, get_registry
        loss = get_loss("cka")
        x = torch.randn(3, 7, 16)
        rotation, _ = torch.linalg.qr(torch.randn(16, 16))
        same = float(loss(x, x @ rotation * 3.0))   # CKA is invariant to rotation and scale
        other = float(loss(x, torch.randn(3, 7, 24)))
        component = get_registry().get("match_loss", "cka")
        print(same, other, component.distribution)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **_env(installed_example, "distill,distill-cka")},
    )
    assert out.returncode == 0, out.stderr
    same, other, distribution = out.stdout.split()
    assert abs(float(same)) < 1e-5 and float(other) > 0.1 and distribution == "distill-cka"


def test_plugin_claiming_a_taken_name_is_a_clear_error(installed_example, tmp_path) -> None:
    # a second installed distribution whose plugin also declares "cka"
    info = tmp_path / "distill_cka_clone-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: distill-cka-clone\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[distill]\ncka_clone = distill_cka_clone\n")
    (tmp_path / "distill_cka_clone.py").write_text(
        textwrap.dedent("""
        from distill_core import ComponentInfo, hookimpl

        @hookimpl
        def declare_components():
            return [ComponentInfo(kind="match_loss", name="cka", summary="another CKA")]

        @hookimpl
        def compute_match_loss(name, feature_S, feature_T, mask, params):
            return None
    """)
    )
    env = _env(installed_example, "distill,distill-cka,distill-cka-clone")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    result = run_cli("plugins", env=env)
    assert result.returncode == 1
    assert "'cka' is declared twice" in result.stderr
    assert "distill-cka" in result.stderr and "distill-cka-clone" in result.stderr
    assert "DISTILL_BLOCK_PLUGINS" in result.stderr
    # the way out works: block one of them
    result = run_cli("plugins", env={**env, "DISTILL_BLOCK_PLUGINS": "cka_clone"})
    assert result.returncode == 0, result.stderr
