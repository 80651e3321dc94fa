"""The LM demo's outputs for people: the results table, the verdict, and the held-out loss plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from distill_core.demo.measure import mean
from distill_core.demo.report import COLOURS, new_figure, save_figure


@dataclass
class LMRow:
    """One row of the table: a model, its size, and what was measured (one value per seed for students)."""

    name: str
    layers: int
    parameters: int
    parameters_without_embeddings: int
    perplexities: list[float] = field(default_factory=list)
    agreements: list[float] = field(default_factory=list)
    ms_per_token: float = float("nan")
    train_seconds: list[float] = field(default_factory=list)
    teacher_seconds: list[float] = field(default_factory=list)
    continuation: str = ""


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M"


def _per_seed(values: Sequence[float], spec: str, scale: float = 1.0, suffix: str = "") -> str:
    """``312.4`` for one value; ``312.4 (310.1, 314.7)`` for several (the mean, then each seed)."""
    text = f"{mean(values) * scale:{spec}}{suffix}"
    if len(values) > 1:
        text += " (" + ", ".join(f"{value * scale:{spec}}" for value in values) + ")"
    return text


def _train_time(row: LMRow) -> str:
    if not row.train_seconds:
        return "-"
    text = f"{mean(row.train_seconds):.0f} s"
    if row.teacher_seconds:
        text += f" (teacher {mean(row.teacher_seconds):.0f} s)"
    return text


def format_table(rows: Sequence[LMRow]) -> str:
    """Return an aligned plain-text table; the first row is the teacher, the others are compared with it."""
    teacher = rows[0]
    header = ("model", "layers", "params (w/o embeddings)", "held-out perplexity", "top-1 agreement w/ teacher",
              "CPU time / token", "train time / seed")
    lines = [header]
    for row in rows:
        speedup = teacher.ms_per_token / row.ms_per_token if row.ms_per_token else float("nan")
        lines.append((
            row.name,
            str(row.layers),
            f"{_millions(row.parameters)} ({_millions(row.parameters_without_embeddings)})",
            _per_seed(row.perplexities, ",.1f"),
            "-" if row is teacher else _per_seed(row.agreements, ".1f", 100, "%"),
            f"{row.ms_per_token:.1f} ms" + ("" if row is teacher else f" ({speedup:.1f}x faster)"),
            _train_time(row),
        ))
    widths = [max(len(line[index]) for line in lines) for index in range(len(header))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def verdict(distilled: LMRow, alone: LMRow) -> tuple[bool, list[str]]:
    """Return whether the distilled student's held-out perplexity is below the student alone's for every seed."""
    wins = [d < a for d, a in zip(distilled.perplexities, alone.perplexities)]
    passed = bool(wins) and all(wins)
    seeds = ", ".join(f"{d:,.1f} vs {a:,.1f}" for d, a in zip(distilled.perplexities, alone.perplexities))
    ratio = mean(distilled.perplexities) / mean(alone.perplexities)
    return passed, [
        f"held-out perplexity, distilled vs alone, per seed: {seeds}; the distilled student's is {ratio:.0%} of the "
        f"alone student's; lower for every seed: {'yes' if passed else 'NO'}",
    ]


def plot_curves(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], path: Path, *,
                teacher_loss: float | None = None, title: str = "") -> Path:
    """Plot held-out loss (nats per token) against training steps, one line per run, and save a PNG.

    :param curves: ``{label: [run, ...]}``, each run a list of ``(step, loss)`` starting at step 0;
        runs of a label share a colour.

    The untrained student (step 0) scores far above everything after it (a copy of 6 of 30 layers
    has a perplexity in the hundreds of thousands), so the axis is fitted to the trained points and
    the step-0 loss is written in a corner instead of squashing the curves flat.
    """
    figure, axes = new_figure("the held-out loss plot")
    trained = [value for runs in curves.values() for run in runs for step, value in run if step > 0]
    initial = [value for runs in curves.values() for run in runs for step, value in run if step == 0]
    for colour, (label, runs) in zip(COLOURS, curves.items()):
        for index, run in enumerate(runs):
            axes.plot([step for step, _ in run], [value for _, value in run], marker="o", markersize=3, color=colour,
                      alpha=0.9, label=label if index == 0 else None)
    if teacher_loss is not None:
        axes.axhline(teacher_loss, color="black", linestyle="--", linewidth=1, label="teacher")
    if trained:
        low = min([*trained, *([] if teacher_loss is None else [teacher_loss])])
        axes.set_ylim(low - 0.3, max(trained) + 0.6)
    if initial:
        axes.text(0.02, 0.5, f"step 0 (untrained student): {initial[0]:.2f}, off the scale", transform=axes.transAxes,
                  fontsize=8, color="dimgrey")
    return save_figure(figure, axes, path, ylabel="held-out loss (nats / token)", title=title, legend="upper right")
