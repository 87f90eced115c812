"""The three-stage training engine. It knows nothing of Ray or MLflow: ``tuning`` drives it through
the per-epoch callback and the checkpoint folder.

Contract (kept small on purpose):

- ``train(cfg, out_dir, callback=None, resume=False)`` runs the variant's stages and returns the
  final metrics (also written to ``out_dir/metrics.json``).
- After every epoch it writes ``out_dir/checkpoints/last.pt`` (and ``stage{n}_best.pt`` when the
  validation top-1 improved), then calls ``callback(EpochReport)``. That folder is the whole resume
  state: copy it back and call ``train(..., resume=True)`` to continue after the last epoch.
- ``EpochReport.global_epoch`` counts epochs across stages (1-based): a scheduler's time axis.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from egomodel import checkpoint as ck
from egomodel.config import Config, dump, flatten
from egomodel.data.dataset import ClipDataset, DataBundle, load_bundle, make_loader
from egomodel.model.backbone import calibrate_batchnorm
from egomodel.model.network import EgoRNN
from egomodel.report import confusion, plot_confusion, write_per_class
from egomodel.stages import Stage, apply_stage, stage_plan
from egomodel.steps import evaluate, pick_device, train_epoch

# keys that may differ between a run and its resume without changing the result
RESUME_FREE_KEYS = {"data.num_workers", "data.root", "train.device"}


@dataclass
class EpochReport:
    stage: int
    epoch: int  # 1-based within the stage
    global_epoch: int  # 1-based across stages
    stage_epochs: int
    metrics: dict[str, float]
    is_best: bool  # best validation top-1 of this stage so far
    checkpoint_dir: Path  # last.pt + stage bests: everything a resume needs


Callback = Callable[[EpochReport], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def uses_mmaps(cfg: Config) -> bool:
    return cfg.model.variant in ("ms", "feedback")


def eval_loader(cfg: Config, bundle: DataBundle, clips: list) -> torch.utils.data.DataLoader:
    ds = ClipDataset(clips, bundle.classes, cfg.data, cfg.train.seed, with_mmaps=uses_mmaps(cfg))
    return make_loader(ds, cfg.train.eval_batch_size, cfg.data.num_workers)


class ResumeError(RuntimeError):
    pass


def _check_resume(state: dict[str, Any], cfg: Config, bundle: DataBundle, path: Path) -> None:
    old, new = flatten(state["config"]), flatten(cfg.to_dict())
    diff = sorted(k for k in new if k not in RESUME_FREE_KEYS and old.get(k) != new[k])
    if diff:
        raise ResumeError(f"cannot resume from {path}: config differs at {', '.join(diff)}")
    if state.get("fingerprint") != bundle.fingerprint:
        raise ResumeError(
            f"cannot resume from {path}: the data set changed (fingerprint {state.get('fingerprint')} "
            f"-> {bundle.fingerprint})"
        )


def train(
    cfg: Config,
    out_dir: str | Path,
    callback: Callback | None = None,
    resume: bool = False,
    evaluate_test: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every stage of ``cfg.model.variant``; see the module docstring for the contract."""
    out = Path(out_dir)
    ckdir = out / "checkpoints"
    bundle = load_bundle(cfg.data, cfg.train.seed, need_mmaps=uses_mmaps(cfg))
    state = None
    if resume:
        if not (ckdir / ck.LAST).is_file():
            raise ResumeError(f"nothing to resume: {ckdir / ck.LAST} does not exist")
        state = ck.load(ckdir / ck.LAST)
        _check_resume(state, cfg, bundle, ckdir / ck.LAST)
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.yaml")

    device = pick_device(cfg.train.device)
    plan = stage_plan(cfg.model.variant, cfg.train)
    offsets = np.cumsum([0] + [s.epochs for s in plan]).tolist()
    model = EgoRNN(cfg.model, len(bundle.classes), cfg.data.image_size).to(device)
    train_ds = ClipDataset(bundle.train, bundle.classes, cfg.data, cfg.train.seed, with_mmaps=uses_mmaps(cfg))
    val_loader = eval_loader(cfg, bundle, bundle.val)

    history: list[dict[str, Any]] = []
    best: dict[str, dict[str, float]] = {}
    start_i, start_epoch = 0, 0
    if state is None:
        seed_everything(cfg.train.seed)
        if cfg.model.pretrained == "none":
            _calibrate(model, train_ds, device)
    else:
        history, best = list(state["history"]), dict(state["best"])
        start_i = [s.number for s in plan].index(state["stage"])
        start_epoch = state["epoch"]
        if start_epoch >= plan[start_i].epochs:  # resumed exactly at a stage boundary
            start_i, start_epoch = start_i + 1, 0
        model.load_state_dict(state["model"])
        torch.set_rng_state(state["rng"])

    for i in range(start_i, len(plan)):
        stage = plan[i]
        mid_stage = state is not None and i == start_i and start_epoch > 0
        if i > 0 and not mid_stage:  # stage n starts from stage n-1's best by validation
            model.load_state_dict(ck.load(ckdir / ck.best_name(plan[i - 1].number))["model"])
        apply_stage(model, stage.trainable)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=stage.lr, weight_decay=cfg.train.weight_decay, eps=cfg.train.eps)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(stage.milestones), stage.gamma)
        if mid_stage:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        first = start_epoch + 1 if mid_stage else 1
        for epoch in range(first, stage.epochs + 1):
            g = offsets[i] + epoch
            loader = make_loader(train_ds, stage.batch_size, cfg.data.num_workers, epoch_key=g)
            lr = opt.param_groups[0]["lr"]
            desc = f"stage {stage.number} epoch {epoch}/{stage.epochs}"
            metrics = train_epoch(model, loader, opt, cfg, device, desc, progress)
            sched.step()
            metrics["lr"] = lr
            key = str(stage.number)
            if bundle.val:
                val = evaluate(model, val_loader, cfg, device)
                metrics.update(val_loss=val.loss, val_top1=val.top1)
                is_best = key not in best or val.top1 > best[key]["val_top1"]
            else:  # no validation set: each stage keeps its last epoch
                is_best = True
            if is_best:
                best[key] = {"val_top1": metrics.get("val_top1", float("nan")), "epoch": epoch}
                ck.save(ckdir / ck.best_name(stage.number), _payload(model, cfg, bundle, stage, epoch, g))
            history.append({"stage": stage.number, "epoch": epoch, "global_epoch": g, **metrics})
            ck.save(ckdir / ck.LAST, {
                **_payload(model, cfg, bundle, stage, epoch, g),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "history": history, "best": best, "rng": torch.get_rng_state(),
            })
            tqdm.write(f"{desc}: loss {metrics['train_loss']:.3f} train {metrics['train_top1']:.3f} "
                       f"val {metrics.get('val_top1', float('nan')):.3f} wait {metrics['data_wait_fraction']:.1%}")
            if callback is not None:
                callback(EpochReport(stage.number, epoch, g, stage.epochs, metrics, is_best, ckdir))
    return finish(cfg, out, bundle, model, plan, best, history, device, evaluate_test)


def _calibrate(model: EgoRNN, ds: ClipDataset, device: torch.device, clips: int = 16) -> None:
    loader = make_loader(ds, 4, 0)
    batches = []
    for i, batch in enumerate(loader):
        if i * 4 >= clips:
            break
        batches.append(batch["frames"].flatten(0, 1).to(device))
    calibrate_batchnorm(model.backbone, batches)


def _payload(model: EgoRNN, cfg: Config, bundle: DataBundle, stage: Stage, epoch: int, g: int) -> dict[str, Any]:
    return {
        "model": model.state_dict(), "config": cfg.to_dict(), "classes": bundle.classes,
        "stage": stage.number, "epoch": epoch, "global_epoch": g, "fingerprint": bundle.fingerprint,
    }


def finish(
    cfg: Config, out: Path, bundle: DataBundle, model: EgoRNN, plan: list[Stage],
    best: dict[str, dict[str, float]], history: list[dict[str, Any]], device: torch.device,
    evaluate_test: bool,
) -> dict[str, Any]:
    """Evaluate the last stage's best checkpoint and write metrics, confusion matrix, per-class table."""
    last = plan[-1].number
    best_path = out / "checkpoints" / ck.best_name(last)
    model.load_state_dict(ck.load(best_path)["model"])
    waits = [h["data_wait_fraction"] for h in history]
    metrics: dict[str, Any] = {
        "classes": bundle.classes,
        "num_train_clips": len(bundle.train), "num_val_clips": len(bundle.val), "num_test_clips": len(bundle.test),
        "data_fingerprint": bundle.fingerprint,
        "val_top1": None, "test_top1": None,
        "best_checkpoint": str(best_path),
        "data_wait_fraction": float(np.mean(waits)) if waits else 0.0,
        "stages": {k: {"best_epoch": v["epoch"], "best_val_top1": v["val_top1"],
                       "epochs": next(s.epochs for s in plan if str(s.number) == k)} for k, v in best.items()},
        "history": history,
    }
    splits = (["val"] if bundle.val else []) + (["test"] if evaluate_test else [])
    for split in splits:
        res = evaluate(model, eval_loader(cfg, bundle, getattr(bundle, split)), cfg, device)
        cm = confusion(res.labels, res.preds, len(bundle.classes))
        metrics[f"{split}_top1"] = res.top1
        plot_confusion(cm, bundle.classes, out / f"confusion_{split}.png", f"{split} top-1 {res.top1:.3f}")
        write_per_class(cm, bundle.classes, out / f"per_class_{split}.csv")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
