"""The demo's default thread count leaves out the cores other processes keep busy."""

from __future__ import annotations

import os
import sys

import pytest

from distill_core.demo import cpus


@pytest.mark.parametrize(
    ("allowed", "busy", "threads"),
    [(2, 0.05, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 3.7, 1), (8, 2.4, 6), (4, None, 4), (1, 0.9, 1)],
)
def test_threads_for_leaves_busy_cores_out(allowed, busy, threads):
    assert cpus.threads_for(allowed, busy) == threads


def test_default_threads_says_why_it_uses_fewer(monkeypatch):
    monkeypatch.setattr(cpus, "allowed_cpus", lambda: [0, 1])
    monkeypatch.setattr(cpus, "busy_cpus", lambda cpu_ids: 1.02)
    assert cpus.default_threads() == (1, "2 cores, 1.0 busy with other processes; --threads 2 uses all of them")
    monkeypatch.setattr(cpus, "busy_cpus", lambda cpu_ids: 0.1)
    assert cpus.default_threads() == (2, "")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="busy_cpus measures from /proc/stat on Linux only")
def test_busy_cpus_reads_this_machine(monkeypatch):
    # without the load average to fall back on, the number must come from /proc/stat
    monkeypatch.delattr(os, "getloadavg", raising=False)
    allowed = cpus.allowed_cpus()
    busy = cpus.busy_cpus(allowed, interval=0.1)
    assert isinstance(busy, float), f"busy_cpus read nothing from /proc/stat: {busy!r}"
    assert 0.0 <= busy <= len(allowed) + 1e-9


def test_demo_options_take_the_default_and_check_an_explicit_count(monkeypatch):
    from distill_core.demo.cli import build_parser, resolve_options

    monkeypatch.setattr(cpus, "default_threads", lambda: (1, "2 cores, 1.0 busy with other processes"))
    args = resolve_options(build_parser().parse_args([]))
    assert (args.threads, args.threads_note) == (1, "2 cores, 1.0 busy with other processes")
    args = resolve_options(build_parser().parse_args(["--threads", "3"]))
    assert (args.threads, args.threads_note) == (3, "")
    with pytest.raises(ValueError, match="--threads must be at least 1"):
        resolve_options(build_parser().parse_args(["--threads", "0"]))
