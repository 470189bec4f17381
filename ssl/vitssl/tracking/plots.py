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


def image_arrays(images) -> list:
    """(N, C, H, W) tensor in [0, 1] -> N arrays imshow takes: (H, W) grey, or (H, W, C) colour."""
    images = images.detach().float().cpu()
    return [im[0].numpy() if im.shape[0] == 1 else im.permute(1, 2, 0).numpy() for im in images]


def image_rows_figure(rows: dict[str, "list"], title: str = ""):
    """rows: name -> (N, C, H, W) tensor, or a list of (H, W) or (H, W, 3) arrays; one labelled row each."""
    rows = {name: v if isinstance(v, list) else image_arrays(v) for name, v in rows.items()}
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


def draw(figure):
    """The matplotlib figure of what an objective asked to draw (vitssl.objectives.base.ImageRows)."""
    return image_rows_figure(figure.rows, figure.title)


def close(fig) -> None:
    plt.close(fig)
