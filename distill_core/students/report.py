"""Show why layers were kept: each layer's block influence as a text table and a PNG bar chart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["layer_table", "plot_layer_scores"]


def layer_table(block_influence: Sequence[float], kept: Sequence[int]) -> str:
    """Return a text table: each layer, its block influence, its rank (1 = most influential) and whether kept.

    >>> print(layer_table([0.5, 0.1], [0]))
    layer  block influence  rank  kept
        0         0.500000     1   yes
        1         0.100000     2     -
    """
    order = sorted(range(len(block_influence)), key=lambda index: (-block_influence[index], index))
    rank = {layer: position + 1 for position, layer in enumerate(order)}
    kept_set = set(kept)
    lines = ["layer  block influence  rank  kept"]
    for layer, score in enumerate(block_influence):
        lines.append(f"{layer:5d}  {score:15.6f}  {rank[layer]:4d}  {'yes' if layer in kept_set else '-':>4}")
    return "\n".join(lines)


def plot_layer_scores(block_influence: Sequence[float], kept: Sequence[int], path: str | Path, *,
                      title: str = "Block influence per layer (kept layers filled)") -> Path:
    """Write a bar chart of each layer's block influence to ``path`` (PNG), kept layers filled, and return it."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    from matplotlib import pyplot

    kept_set = set(kept)
    layers = list(range(len(block_influence)))
    figure, axes = pyplot.subplots(figsize=(max(6.0, 0.3 * len(layers) + 2), 3.5))
    try:
        colours = ["tab:blue" if layer in kept_set else "white" for layer in layers]
        axes.bar(layers, block_influence, color=colours, edgecolor="tab:blue")
        axes.set_xlabel("teacher layer")
        axes.set_ylabel("block influence (1 - cos)")
        axes.set_title(title)
        axes.set_xticks(layers)
        axes.tick_params(axis="x", labelsize=7)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
    finally:
        pyplot.close(figure)
    return path
