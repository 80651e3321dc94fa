"""The demo's outputs for people: the results table, the verdict lines and the accuracy plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill_core.demo.assets import require_module
from distill_core.demo.measure import describe, mean

MATPLOTLIB_INSTALL = 'pip install "matplotlib>=3.7"'
TENSORBOARD_INSTALL = "pip install tensorboard"


def tensorboard_line(log_dir: Path) -> str:
    """The line that says where the TensorBoard logs are, and how to get the viewer when it is missing."""
    import importlib.util

    line = f"TensorBoard logs: tensorboard --logdir {log_dir}"
    return line if importlib.util.find_spec("tensorboard") else f"{line} (the viewer: {TENSORBOARD_INSTALL})"


@dataclass
class ModelResult:
    """One row of the table: a model and what was measured on it (one accuracy per seed)."""

    name: str
    layers: int
    parameters: int
    parameters_without_embeddings: int
    accuracies: list[float] = field(default_factory=list)
    latency_ms: float = float("nan")
    train_seconds: list[float] = field(default_factory=list)


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M"


def format_table(rows: Sequence[ModelResult]) -> str:
    """Return an aligned plain-text table of the rows."""
    teacher_latency = rows[0].latency_ms
    header = ("model", "layers", "params (w/o embeddings)", "dev accuracy", "CPU latency / example")
    lines = [header]
    for row in rows:
        speedup = teacher_latency / row.latency_ms if row.latency_ms else float("nan")
        lines.append((
            row.name,
            str(row.layers),
            f"{_millions(row.parameters)} ({_millions(row.parameters_without_embeddings)})",
            describe(row.accuracies),
            f"{row.latency_ms:.1f} ms" + ("" if row is rows[0] else f" ({speedup:.1f}x faster)"),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def verdict(teacher: ModelResult, distilled: ModelResult, alone: ModelResult, *,
            min_ratio: float = 0.95) -> tuple[bool, list[str]]:
    """Return whether distillation did its job, and the lines that say so.

    The job: the distilled student keeps at least ``min_ratio`` of the teacher's dev accuracy and
    beats the student trained alone (means over the seeds).
    """
    teacher_accuracy, distilled_accuracy, alone_accuracy = (mean(r.accuracies) for r in (teacher, distilled, alone))
    ratio = distilled_accuracy / teacher_accuracy
    gain = (distilled_accuracy - alone_accuracy) * 100
    keeps, beats = ratio >= min_ratio, gain > 0
    lines = [
        f"distilled student keeps {ratio:.1%} of the teacher's accuracy (target >= {min_ratio:.0%}): "
        f"{'yes' if keeps else 'NO'}",
        f"distilled student vs student alone: {gain:+.1f} points (target > 0): {'yes' if beats else 'NO'}",
    ]
    return keeps and beats, lines


def plot_curves(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], path: Path, *,
                teacher_accuracy: float | None = None, title: str = "") -> Path:
    """Plot dev accuracy against training steps, one line per run, and save a PNG.

    :param curves: ``{label: [run, ...]}``, each run a list of ``(step, accuracy)``; runs of one label
        share a colour.
    """
    figure, axes = new_figure("the accuracy plot")
    for colour, (label, runs) in zip(COLOURS, curves.items()):
        for index, run in enumerate(runs):
            steps = [step for step, _ in run]
            values = [value * 100 for _, value in run]
            axes.plot(steps, values, marker="o", markersize=3, color=colour, alpha=0.9,
                      label=label if index == 0 else None)
    if teacher_accuracy is not None:
        axes.axhline(teacher_accuracy * 100, color="black", linestyle="--", linewidth=1, label="teacher")
        axes.axhline(teacher_accuracy * 95, color="grey", linestyle=":", linewidth=1, label="95% of teacher")
    return save_figure(figure, axes, path, ylabel="dev accuracy (%)", title=title, legend="lower right")


#: one colour per kind of run (runs of a kind share it)
COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red"]


def new_figure(what: str) -> tuple[Any, Any]:
    """A figure and axes of the demos' size, with matplotlib's file-only backend (``what``: for the error)."""
    require_module("matplotlib", MATPLOTLIB_INSTALL, what)
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.2), dpi=110)


def save_figure(figure: Any, axes: Any, path: Path, *, ylabel: str, title: str, legend: str) -> Path:
    """Label the step axis, add title, grid and legend, write the PNG to ``path`` and close the figure."""
    import matplotlib.pyplot as plt

    axes.set_xlabel("training step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc=legend)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
