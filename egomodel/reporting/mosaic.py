"""Image grids drawn as one picture: panels are pasted into a single array, labelled with figure text.

A grid of many small matplotlib axes (one per frame, one colorbar each) spends most of its time laying
out and drawing axes and ticks: the feedback figure took about 1 s of a smoke trial's 7 s. Here the
panels are resized and colour-mapped with NumPy/PyTorch, pasted into one RGB array and put on the
figure with ``figimage`` (no axes, no resampling); titles and row labels are figure text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display): every picture goes through this."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colorize(img: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """(H, W) values -> (H, W, 3) RGB in [0, 1] through a matplotlib colormap, clipped to [vmin, vmax]."""
    from matplotlib import colormaps

    span = max(vmax - vmin, 1e-12)
    return colormaps[cmap](np.clip((np.asarray(img, np.float64) - vmin) / span, 0.0, 1.0))[..., :3]


def fit(img: np.ndarray, side: int, smooth: bool = True) -> np.ndarray:
    """(H, W, 3) RGB resized to (side, side, 3): bilinear for pictures, nearest for feature maps
    (``smooth=False``: a 7x7 map stays seven visible cells)."""
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    if smooth:
        y = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    else:
        y = F.interpolate(x, size=(side, side), mode="nearest")
    return y[0].permute(1, 2, 0).clamp(0.0, 1.0).numpy()


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of a grid: ``cell``-square panels, ``title`` pixels above each row of panels,
    ``left`` pixels for row labels, ``top`` for the figure's title, ``gap`` between panels."""

    rows: int
    cols: int
    cell: int = 150
    gap: int = 6
    title: int = 26
    left: int = 0
    top: int = 30

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.top + self.rows * (self.title + self.cell + self.gap),
                self.left + self.cols * (self.cell + self.gap) + self.gap)

    def origin(self, r: int, c: int) -> tuple[int, int]:
        """Top-left pixel (y, x) of panel (r, c), counted from the top of the picture."""
        return (self.top + r * (self.title + self.cell + self.gap) + self.title,
                self.left + self.gap + c * (self.cell + self.gap))


def paste(panels: Sequence[Sequence[np.ndarray | None]], layout: Layout) -> np.ndarray:
    """Rows of (cell, cell, 3) RGB panels (None: left white) into one (H, W, 3) picture on white."""
    h, w = layout.size
    out = np.ones((h, w, 3), dtype=np.float32)
    for r, row in enumerate(panels):
        for c, p in enumerate(row):
            if p is not None:
                y, x = layout.origin(r, c)
                out[y:y + layout.cell, x:x + layout.cell] = p
    return out


def grid_figure(panels: Sequence[Sequence[np.ndarray | None]], titles: Sequence[Sequence[str]], layout: Layout,
                suptitle: str = "", row_labels: Sequence[tuple[str, str]] = (), dpi: int = 90) -> Any:
    """A matplotlib figure of the pasted panels with a title over each and an optional (text, colour)
    label left of each row. Save it at ``dpi`` (the pixels are placed 1:1 at that resolution)."""
    plt = pyplot()
    h, w = layout.size
    fig = plt.figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    fig.figimage(paste(panels, layout), origin="upper")
    for r, row in enumerate(titles):
        for c, text in enumerate(row):
            if text:
                y, x = layout.origin(r, c)
                fig.text((x + layout.cell / 2) / w, 1 - (y - 3) / h, text, ha="center", va="bottom", fontsize=7)
    for r, (text, colour) in enumerate(row_labels):
        y, _ = layout.origin(r, 0)
        fig.text(4 / w, 1 - (y + layout.cell / 2) / h, text, ha="left", va="center", fontsize=7, color=colour)
    if suptitle:
        fig.text(0.5, 1 - 6 / h, suptitle, ha="center", va="top", fontsize=9)
    return fig
