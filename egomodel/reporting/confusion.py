"""Confusion matrix and per-class accuracy, as files a person opens."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm  # rows: true class, columns: predicted


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    totals = cm.sum(axis=1)
    return np.divide(np.diag(cm), totals, out=np.full(len(cm), np.nan), where=totals > 0)


def write_per_class(cm: np.ndarray, classes: list[str], path: Path) -> Path:
    acc = per_class_accuracy(cm)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "clips", "correct", "accuracy"])
        for name, row, a in zip(classes, cm, acc):
            w.writerow([name, int(row.sum()), int(row[classes.index(name)]), "" if np.isnan(a) else f"{a:.4f}"])
    return path


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str = "") -> Path:
    from egomodel.reporting.mosaic import pyplot

    plt = pyplot()

    n = len(classes)
    size = max(4.0, 0.28 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or f"confusion (top-1 {np.trace(cm) / max(cm.sum(), 1):.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
