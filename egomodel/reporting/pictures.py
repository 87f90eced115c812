"""Pictures of one trained model, as PNG files a person opens (matplotlib's Agg backend, no display).

- :func:`training_curves`: train/val loss and top-1 against the global epoch, stage boundaries marked.
- :func:`cam_overlays`: the class-activation map of every sampled frame over the frame, a few clips
  per figure with their true and predicted class (the paper's Fig. 1).
- :func:`feedback_maps`: for a feedback model, the β and γ that frame t-1's Conv100 features give at
  the insertion point, beside frame t's features there before and after ``β⊙F+γ`` (the paper's Fig. 3).
- :func:`model_plots`: all of them for a checkpoint, on validation clips (never the test users in a
  search); its command line is ``python -m egomodel.visualize``.

Plain functions over a model, tensors or a checkpoint path; no Ray, Optuna or MLflow here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from egomodel.data.transforms import MEAN, STD, normalize_frames
from egomodel.reporting.mosaic import Layout, colorize, fit, grid_figure, pyplot


def save_figure(fig: Any, path: Path) -> Path:
    """Write a figure as a PNG (its folder made if needed) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    pyplot().close(fig)
    return path


def to_image(frame: torch.Tensor | np.ndarray) -> np.ndarray:
    """A normalised (3, H, W) frame back to an (H, W, 3) RGB image in [0, 1]."""
    x = frame.detach().float().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame, np.float32)
    return np.clip(x.transpose(1, 2, 0) * STD + MEAN, 0.0, 1.0)


# ------------------------------------------------------------------------------ training curves
def training_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Loss and top-1 (train, val) per global epoch from ``metrics.json``'s ``history`` rows.

    Dashed lines mark where each stage starts; each stage's best validation epoch is circled.
    Returns None when there is no history to draw.
    """
    rows = [r for r in history if isinstance(r, dict) and "global_epoch" in r]
    if not rows:
        return None
    plt = pyplot()
    x = np.array([r["global_epoch"] for r in rows])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, what in zip(axes, ("loss", "top1")):
        for split, style in (("train", "-"), ("val", "-")):
            y = np.array([r.get(f"{split}_{what}", np.nan) for r in rows], dtype=float)
            if np.isfinite(y).any():
                ax.plot(x, y, style, marker="." if len(x) < 60 else None, label=f"{split} {what}")
        ax.set_xlabel("global epoch")
        ax.set_ylabel("top-1" if what == "top1" else "loss")
        if what == "top1":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    stages = sorted({int(r.get("stage", 0)) for r in rows})
    for s in stages:
        part = [r for r in rows if int(r.get("stage", 0)) == s]
        start = min(r["global_epoch"] for r in part)
        for ax in axes:
            if start > x.min():
                ax.axvline(start - 0.5, color="grey", ls="--", lw=1)
            ax.text(start - 0.4, 1.0, f"stage {s}", transform=ax.get_xaxis_transform(), fontsize=8,
                    va="bottom", color="grey")
        vals = [(r.get("val_top1"), r["global_epoch"]) for r in part if r.get("val_top1") is not None]
        if vals:
            best_val, best_epoch = max(vals, key=lambda v: (v[0], -v[1]))  # first epoch with the best score
            axes[1].plot([best_epoch], [best_val], "o", mfc="none", mec="red", ms=9)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    # fixed margins: tight_layout measured every tick label again, a third of a trial's picture time
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.13, top=0.84, wspace=0.18)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------- CAM overlays
@torch.no_grad()
def cam_overlays(
    model: torch.nn.Module, frames: torch.Tensor, labels: Sequence[int], classes: Sequence[str],
    path: str | Path, alpha: float = 0.5,
) -> Path | None:
    """The attention map of every frame over the frame: one row per clip, one column per frame.

    frames: (B, T, 3, H, W) normalised clips; labels: their true class indices. The model's ``cams``
    (B, T, s, s) are upsampled bilinearly to H×W. Returns None for a variant without attention.
    """
    model.eval()
    out = model(frames)
    if out.cams is None:
        return None
    b, t, _, h, w = frames.shape
    cams = F.interpolate(out.cams.float().flatten(0, 1)[:, None], size=(h, w), mode="bilinear",
                         align_corners=False)[:, 0].unflatten(0, (b, t))
    probs = torch.softmax(out.logits.float(), 1)
    layout = Layout(rows=b, cols=t, cell=min(150, max(h, w, 110)), left=150)
    panels, titles, labels_out = [], [], []
    for i in range(b):
        pred = int(probs[i].argmax())
        row = []
        for j in range(t):
            cam = cams[i, j].cpu().numpy()
            cam = (cam - cam.min()) / max(float(cam.max() - cam.min()), 1e-12)
            blend = (1 - alpha) * to_image(frames[i, j]) + alpha * colorize(cam, "jet", 0.0, 1.0)
            row.append(fit(blend, layout.cell))
        panels.append(row)
        titles.append([f"frame {j + 1}" for j in range(t)] if i == 0 else [])
        labels_out.append((f"true {classes[int(labels[i])]}\npred {classes[pred]} ({float(probs[i, pred]):.2f})",
                           "green" if pred == int(labels[i]) else "red"))
    fig = grid_figure(panels, titles, layout, "class-activation maps (Ego-RNN attention), bilinear upsampling",
                      labels_out)
    return save_figure(fig, path)


# -------------------------------------------------------------------------- feedback β / γ maps
@torch.no_grad()
def feedback_tensors(model: torch.nn.Module, clip: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Run one clip (T, 3, H, W) through a feedback model and capture, for every frame t ≥ 1, the
    insertion point's features before (``before``) and after (``after``) modulation, and the ``beta``
    and ``gamma`` that frame t-1's Conv100 (``conv100``, upsampled: ``up``) gave.

    The model's own forward is run (the branch always runs here, as in stage 3); the tensors come from
    hooks on ``model.feedback`` and its β branch, so they are exactly what the forward used.
    """
    fb = getattr(model, "feedback", None)
    if fb is None:
        raise ValueError("the model has no feedback branch (variant is not 'feedback')")
    records: list[dict[str, torch.Tensor]] = []
    pending: dict[str, torch.Tensor] = {}

    def on_up(_m: Any, args: tuple) -> None:
        pending["up"] = args[0]

    def on_branch(_m: Any, args: tuple, output: torch.Tensor) -> None:
        features, prev = args[0], args[1]
        if prev is None or "up" not in pending:
            return  # frame 0: no previous frame, identity
        beta, gamma = fb.coefficients(pending.pop("up"))
        records.append({"before": features[0].float(), "after": output[0].float(), "beta": beta[0].float(),
                        "gamma": gamma[0].float(), "conv100": prev[0].float()})

    was_on = bool(model.feedback_on)
    model.eval()
    model.feedback_on.fill_(True)
    hooks = [fb.beta.register_forward_pre_hook(on_up), fb.register_forward_hook(on_branch)]
    try:
        model(clip[None])
    finally:
        for hk in hooks:
            hk.remove()
        model.feedback_on.fill_(was_on)
    return records


def _top_channels(rec: dict[str, torch.Tensor], n: int) -> list[int]:
    """The channels where the modulation moves the features most (then by index)."""
    change = (rec["after"] - rec["before"]).abs().flatten(1).mean(1)
    spread = rec["beta"].flatten(1).std(1) + rec["gamma"].flatten(1).std(1)
    score = change + spread
    if float(score.max()) <= 0:
        return list(range(min(n, len(score))))
    return sorted(torch.argsort(score, descending=True)[:n].tolist())


def feedback_maps(
    model: torch.nn.Module, clip: torch.Tensor, path: str | Path, t: int | None = None, channels: int = 4,
    title: str = "",
) -> Path | None:
    """β and γ beside the features they modulate at frame ``t`` (default: the middle frame ≥ 1).

    First row: frames t and t-1, frame t-1's Conv100 (mean over its 100 channels), β/γ ranges. Then
    one row per channel (those the modulation moves most): the features before modulation, β, γ,
    β⊙F+γ, and the change. Returns None for a clip of one frame.
    """
    records = feedback_tensors(model, clip)
    if not records:
        return None
    t = max(1, min(t if t is not None else max(1, clip.shape[0] // 2), len(records)))
    rec = records[t - 1]
    chans = _top_channels(rec, channels)
    layout = Layout(rows=len(chans) + 1, cols=5, cell=150, title=28)
    b, g = rec["beta"], rec["gamma"]
    conv = rec["conv100"].mean(0).cpu().numpy()
    panels = [[fit(to_image(clip[t]), layout.cell), fit(to_image(clip[t - 1]), layout.cell),
               fit(colorize(conv, "viridis", float(conv.min()), float(conv.max())), layout.cell, smooth=False)]]
    titles = [[f"frame {t + 1}", f"frame {t} (feeds back)",
               f"frame {t} Conv100, mean of {rec['conv100'].shape[0]}\n[{conv.min():.3g}, {conv.max():.3g}]",
               f"β: mean {float(b.mean()):.3f}, [{float(b.min()):.3f}, {float(b.max()):.3f}]\n"
               f"γ: mean {float(g.mean()):.3f}, [{float(g.min()):.3f}, {float(g.max()):.3f}]",
               f"features {tuple(rec['before'].shape)}"]]
    cols = ["before (F)", "β", "γ", "after (β⊙F+γ)", "after − before"]
    diff = rec["after"] - rec["before"]
    for c in chans:
        row, names = [], []
        for k, (name, tensor) in enumerate(zip(cols, (rec["before"], b, g, rec["after"], diff))):
            img = tensor[c].cpu().numpy()
            if k in (1, 2, 4):  # diverging around the identity (β = 1, γ = 0, no change): white is no effect
                centre = 1.0 if k == 1 else 0.0
                half = max(float(np.abs(img - centre).max()), 1e-6)
                lo, hi, cmap = centre - half, centre + half, "RdBu_r"
            else:  # before and after on one grey scale
                lo = float(min(rec["before"][c].min(), rec["after"][c].min()))
                hi, cmap = max(float(max(rec["before"][c].max(), rec["after"][c].max())), lo + 1e-6), "gray"
            row.append(fit(colorize(img, cmap, lo, hi), layout.cell, smooth=False))
            names.append(f"{name}, channel {c}\n{cmap.split('_')[0]} [{lo:.3g}, {hi:.3g}]")
        panels.append(row)
        titles.append(names)
    fig = grid_figure(panels, titles, layout, title or "feedback branch: frame t-1's motion features modulate frame t")
    return save_figure(fig, path)


# ------------------------------------------------------------------------- all of it for a model
def pick_clips(labels: Sequence[int], n: int) -> list[int]:
    """Up to ``n`` clip indices, one class at a time (round robin over classes, in label order)."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    picked: list[int] = []
    queues = [by_class[k] for k in sorted(by_class)]
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def model_plots(
    checkpoint: str | Path, out_dir: str | Path, history: Sequence[dict[str, Any]] | None = None,
    data_root: str | None = None, split: str = "val", clips: int = 4,
) -> list[Path]:
    """Training curves, CAM overlays and (feedback models) β/γ maps of a checkpoint, as PNGs in
    ``out_dir``: ``training_curves.png``, ``cam_{split}.png``, ``feedback_{split}.png``.

    The clips come from the checkpoint's own data split (same config and seed, centre view).
    ``history`` defaults to the one saved in the checkpoint, if any.
    """
    from egomodel.config import from_dict
    from egomodel.data.dataset import ClipDataset, load_bundle
    from egomodel.model.checkpoint import build_model, load

    out = Path(out_dir)
    state = load(checkpoint)
    model, cfg, classes = build_model(state)
    model.eval()
    written: list[Path] = []
    history = history if history is not None else state.get("history")
    if history:
        p = training_curves(history, out / "training_curves.png",
                            f"{cfg.model.variant}: loss and top-1 per epoch")
        written += [p] if p else []
    if data_root is not None:
        cfg = from_dict(cfg.to_dict(), {"data.root": data_root})
    from egomodel.model import EgoRNN, TwoStream

    model = model.rgb if isinstance(model, TwoStream) else model  # the two-stream model's CAMs are its RGB stream's
    if not isinstance(model, EgoRNN):  # the flow stream has no attention
        return written
    bundle = load_bundle(cfg.data, cfg.train.seed, need_mmaps=False)
    pool = getattr(bundle, split)
    if not pool:
        return written
    ds = ClipDataset(pool, classes, cfg.data, cfg.train.seed)
    labels = [classes.index(c.label_name) for c in pool]
    items = [ds[i] for i in pick_clips(labels, clips)]
    frames = normalize_frames(torch.stack([it["frames"] for it in items]))
    ys = [int(it["label"]) for it in items]
    p = cam_overlays(model, frames, ys, classes, out / f"cam_{split}.png")
    written += [p] if p else []
    if getattr(model, "feedback", None) is not None and frames.shape[1] > 1:
        p = feedback_maps(model, frames[0], out / f"feedback_{split}.png",
                          title=f"feedback at {cfg.model.insertion}: {split} clip of class {classes[ys[0]]}")
        written += [p] if p else []
    return written

