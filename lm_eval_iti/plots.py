"""Figures, written atomically as PNG with matplotlib's object API (no pyplot global state, no display needed).

``save_figure`` is the shared writer; ``heads_heatmap`` is fit-directions' layers x heads view of probe accuracy with the
selected heads marked (the ITI paper's figure 2, without its per-layer sorting unless asked).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .atomic import atomic_path


def new_figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Render ``fig`` to PNG at ``path`` atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    target = Path(path)
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(str(tmp), format="png", bbox_inches="tight")
    return target


def heads_heatmap(accuracy: torch.Tensor, selected, path: str | os.PathLike, title: str = "",
                  sort_heads: bool = False) -> Path:
    """Heatmap of accuracy [layers, heads] (layer 0 at the bottom) with the ``selected`` (layer, head) pairs outlined.

    ``sort_heads`` orders each layer's heads by accuracy (descending) as in the paper's figure; the default keeps head
    indices on the x axis so a cell is a real head.
    """
    import numpy as np
    from matplotlib.patches import Rectangle

    acc = accuracy.detach().float().cpu().numpy()
    L, H = acc.shape
    chosen = {(int(l), int(h)) for l, h in (selected.tolist() if hasattr(selected, "tolist") else selected)}
    column_of = np.tile(np.arange(H), (L, 1))
    if sort_heads:
        order = np.argsort(-acc, axis=1, kind="stable")
        acc = np.take_along_axis(acc, order, axis=1)
        column_of = np.argsort(order, axis=1)  # head h of layer l is drawn at column column_of[l, h]
    fig = new_figure(max(4.0, min(14.0, 0.22 * H + 2.5)), max(3.0, min(12.0, 0.2 * L + 1.5)))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(acc, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest")
    for layer, head in sorted(chosen):
        ax.add_patch(Rectangle((column_of[layer, head] - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red",
                               linewidth=1.2))
    ax.set_xlabel("head (sorted by accuracy within each layer)" if sort_heads else "head")
    ax.set_ylabel("layer")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title or f"probe validation accuracy; {len(chosen)} selected heads outlined", fontsize=9)
    fig.colorbar(image, ax=ax, label="validation accuracy")
    return save_figure(fig, path)
