"""Matplotlib figures for runs; the Agg backend so they render on headless machines."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve_figure(series: dict[str, list[tuple[int, float]]], xlabel: str = "step", title: str = ""):
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=name)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def image_rows_figure(rows: dict[str, "list"], title: str = ""):
    """rows: name -> list of (H, W) or (H, W, 3) arrays, drawn as one labelled row each."""
    names = list(rows)
    cols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(names), cols, figsize=(1.2 * cols, 1.3 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(rows[name]):
                ax.imshow(rows[name][c], cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(name, fontsize=8, loc="left")
    fig.suptitle(title)
    return fig


def close(fig) -> None:
    plt.close(fig)
