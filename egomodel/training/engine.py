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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from egomodel.config import Config, dump, flatten
from egomodel.data.dataset import ClipDataset, DataBundle, load_bundle, make_loader
from egomodel.data.device_clips import DeviceClips, wanted
from egomodel.data.transforms import normalize_frames
from egomodel.model import EgoRNN, StagedModel, TwoStream, build_model
from egomodel.model import checkpoint as ck
from egomodel.model.backbone import calibrate_batchnorm
from egomodel.model.convlstm import ConvLSTM
from egomodel.reporting.confusion import confusion, plot_confusion, write_per_class
from egomodel.training.feature_cache import FeatureCache, evaluate_cached, train_cached_epoch
from egomodel.training.stage_keys import StageStore, shared_state, stage_key
from egomodel.training.stages import Stage, apply_stage, check_blocks, stage_plan
from egomodel.training.steps import evaluate, pick_device, precise_bn, train_epoch
from egomodel.training.streams import load_streams, stream_sources

# keys that may differ between a run and its resume without changing the result
RESUME_FREE_KEYS = {"data.num_workers", "data.root", "data.decoded_cache", "data.packed_cache", "train.device",
                    "model.flow_checkpoint", "model.rgb_checkpoint"}
# blocks before (or in) the MS head: if none trains, the MS loss cannot change anything
MS_UPSTREAM = {"conv1", "layer1", "layer2", "layer3", "layer4", "ms_head", "feedback"}
CACHEABLE = {"convlstm", "classifier"}  # stages training only these can use the stage-1 feature cache


@dataclass
class EpochReport:
    stage: int
    epoch: int  # 1-based within the stage
    global_epoch: int  # 1-based across stages
    stage_epochs: int
    metrics: dict[str, float]
    is_best: bool  # best validation top-1 of this stage so far
    checkpoint_dir: Path  # last.pt + stage bests: everything a resume needs
    from_store: bool = False  # the epoch ran in another trial; this one took the stage from the store


Callback = Callable[[EpochReport], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def uses_mmaps(cfg: Config) -> bool:
    return cfg.model.variant in ("ms", "feedback")


def uses_flow(cfg: Config) -> bool:
    return cfg.model.variant in ("flow", "two_stream")


def make_dataset(cfg: Config, clips: list, classes: list[str]) -> ClipDataset:
    """The inputs the variant reads: frames, motion maps, flow stacks."""
    return ClipDataset(clips, classes, cfg.data, cfg.train.seed, with_mmaps=uses_mmaps(cfg),
                       with_flow=uses_flow(cfg), with_frames=cfg.model.variant != "flow")


def eval_loader(cfg: Config, bundle: DataBundle, clips: list) -> torch.utils.data.DataLoader:
    return make_loader(make_dataset(cfg, clips, bundle.classes), cfg.train.eval_batch_size, cfg.data.num_workers)


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
    store: StageStore | None = None,
    owner: str = "",
) -> dict[str, Any]:
    """Run every stage of ``cfg.model.variant``; see the module docstring for the contract."""
    out = Path(out_dir)
    ckdir = out / "checkpoints"
    bundle = load_bundle(cfg.data, cfg.train.seed, need_mmaps=uses_mmaps(cfg), need_flow=uses_flow(cfg))
    state = None
    if resume:
        if not (ckdir / ck.LAST).is_file():
            raise ResumeError(f"nothing to resume: {ckdir / ck.LAST} does not exist")
        state = ck.load(ckdir / ck.LAST)
        _check_resume(state, cfg, bundle, ckdir / ck.LAST)
    streams = stream_sources(cfg, store) if cfg.model.variant == "two_stream" and state is None else {}
    out.mkdir(parents=True, exist_ok=True)
    dump(cfg, out / "config.yaml")

    device = pick_device(cfg.train.device)
    if device.type == "cpu":
        # with 2+ threads some CPU kernels reduce in a varying order; this picks the fixed-order
        # ones, so a resumed run ends with exactly the weights of an uninterrupted one
        torch.use_deterministic_algorithms(True, warn_only=True)
    plan = stage_plan(cfg.model.variant, cfg.train)
    offsets = np.cumsum([0] + [s.epochs for s in plan]).tolist()
    seed_everything(cfg.train.seed)  # weights initialise the same way for the same seed
    model = build_model(cfg, len(bundle.classes)).to(device)
    check_blocks(model, plan)  # a block the variant lacks, named by the user: an error before any epoch
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    for m in model.modules():
        if isinstance(m, ConvLSTM):
            m.gates = cfg.train.convlstm_gates
    if cfg.train.compile:
        model.compile()  # compiles forward in place: parameter names and checkpoints stay the same
    train_ds = make_dataset(cfg, bundle.train, bundle.classes)
    val_loader = eval_loader(cfg, bundle, bundle.val)

    run = _Run(cfg, out, bundle, model, device, train_ds, val_loader, callback, progress)
    start_i, start_epoch = 0, 0
    if state is None:
        if isinstance(model, EgoRNN) and cfg.model.pretrained == "none":
            _calibrate(model, train_ds, device)
        if isinstance(model, TwoStream):
            load_streams(model, cfg, out, bundle, streams, store, owner, progress, train)
    else:
        run.history, run.best = list(state["history"]), dict(state["best"])
        run.from_store = list(state.get("from_store", []))
        start_i = [s.number for s in plan].index(state["stage"])
        start_epoch = state["epoch"]
        if start_epoch >= plan[start_i].epochs:  # resumed exactly at a stage boundary
            start_i, start_epoch = start_i + 1, 0
        model.load_state_dict(state["model"])
        ck.restore_rng(state)

    if state is not None and store is not None and start_epoch == 0 and start_i > 0:
        run.publish(plan[start_i - 1], store, owner)  # finished just before the stop
    try:
        for i in range(start_i, len(plan)):
            stage = plan[i]
            resumed = (state, start_epoch) if state is not None and i == start_i and start_epoch > 0 else (None, 0)
            if resumed[0] is None:
                # each stage's randomness depends only on the seed and the stage, not on which heads the
                # variant built, so trials that differ only in later stages share earlier ones exactly
                torch.manual_seed(cfg.train.seed * 1000 + stage.number)
                if i > 0:  # stage n starts from stage n-1's best by validation
                    model.load_state_dict(ck.load(ckdir / ck.best_name(plan[i - 1].number))["model"])
            if store is None:
                run.stage(stage, offsets[i], *resumed)
            else:
                run.stage_through_store(stage, offsets[i], store, owner, *resumed)
    finally:
        if run.device_clips is not None:
            run.device_clips.close()  # its thread: the batches it started for an epoch that never comes
    return finish(cfg, out, bundle, model, plan, run.best, run.history, device, evaluate_test, run.from_store)


@dataclass
class _Run:
    """State shared by the stages of one training run."""

    cfg: Config
    out: Path
    bundle: DataBundle
    model: StagedModel
    device: torch.device
    train_ds: ClipDataset
    val_loader: torch.utils.data.DataLoader
    callback: Callback | None
    progress: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, dict[str, float]] = field(default_factory=dict)
    from_store: list[dict[str, Any]] = field(default_factory=list)
    device_clips: DeviceClips | None = None
    on_device: bool | None = None  # data.device_clips resolved (auto: by device and memory) at the first stage

    @property
    def ckdir(self) -> Path:
        return self.out / "checkpoints"

    def stage(self, stage: Stage, offset: int, state: dict[str, Any] | None = None, done: int = 0) -> None:
        """Train one stage (from epoch ``done`` + 1, restoring optimiser state when resuming)."""
        cfg, model, device = self.cfg, self.model, self.device
        active = apply_stage(model, stage.trainable, stage.optional)
        ms_on = bool(set(active) & MS_UPSTREAM)  # the MS loss matters only if something before it trains
        opt = stage.optimizer_for(model, cfg.train.eps)
        sched = stage.scheduler_for(opt)
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        key = str(stage.number)
        cached = cfg.train.stage1_views > 0 and set(active) <= CACHEABLE
        if cached:  # nothing before the ConvLSTM trains: encode each clip view once
            train_cache = FeatureCache(model, self.train_ds, cfg.train.stage1_views, device, progress=self.progress)
            val_cache = (FeatureCache(model, self.val_loader.dataset, 0, device, progress=self.progress)
                         if self.bundle.val else None)
        loader = None  # one training loader (and its workers) for the stage, moved on with set_epoch
        for epoch in range(done + 1, stage.epochs + 1):
            g = offset + epoch
            lr = opt.param_groups[0]["lr"]
            desc = f"stage {stage.number} epoch {epoch}/{stage.epochs}"
            if cached:
                metrics = train_cached_epoch(model, train_cache, opt, stage.batch_size, g, device,
                                             cfg.train.precision)
            else:
                if loader is None:
                    loader = self.train_loader(stage.batch_size, g)
                loader.sampler.set_epoch(g)
                metrics = train_epoch(model, loader, opt, cfg, device, desc, self.progress, ms_on)
                if cfg.train.precise_bn:
                    precise_bn(model, loader, cfg, device)
            sched.step()
            metrics["lr"] = lr
            if self.bundle.val:
                if cached:
                    val_loss, val_top1 = evaluate_cached(model, val_cache, device, cfg.train.precision)
                else:
                    val = evaluate(model, self.val_loader, cfg, device, ms_on)
                    val_loss, val_top1 = val.loss, val.top1
                metrics.update(val_loss=val_loss, val_top1=val_top1)
                is_best = key not in self.best or val_top1 > self.best[key]["val_top1"]
            else:  # no validation set: each stage keeps its last epoch
                is_best = True
            if is_best:
                self.best[key] = {"val_top1": metrics.get("val_top1", float("nan")), "epoch": epoch}
                ck.save(self.ckdir / ck.best_name(stage.number), self.payload(stage, epoch, g))
            self.history.append({"stage": stage.number, "epoch": epoch, "global_epoch": g, **metrics})
            self.save_last(stage, epoch, g, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
            tqdm.write(f"{desc}: loss {metrics['train_loss']:.3f} train {metrics['train_top1']:.3f} "
                       f"val {metrics.get('val_top1', float('nan')):.3f} wait {metrics['data_wait_fraction']:.1%}")
            if self.callback is not None:
                self.callback(EpochReport(stage.number, epoch, g, stage.epochs, metrics, is_best, self.ckdir))

    def stage_through_store(self, stage: Stage, offset: int, store: StageStore, owner: str,
                            state: dict[str, Any] | None = None, done: int = 0) -> None:
        """The stage from the store when a trial has computed it; else computed here (holding its lease)
        and stored. A stage resumed after epoch ``done`` (a retried trial, ``--resume``) claims its lease
        again (a retried trial takes its dead attempt's over at once): it continues and publishes, or
        takes the result another trial published meanwhile in place of its own partial epochs."""
        key = stage_key(self.cfg, self.bundle.fingerprint, stage.number)
        stored = store.get_or_claim(key, owner)
        if stored is not None:
            self.history = [h for h in self.history if h["stage"] != stage.number]  # a resumed stage's part
            self.best.pop(str(stage.number), None)
            self.load_stored(stage, offset, stored, key, reported=done)
            return
        try:
            self.stage(stage, offset, state, done)
        except BaseException:
            store.release(key)
            raise
        store.put(key, self.stored_payload(stage, owner))

    def publish(self, stage: Stage, store: StageStore, owner: str) -> None:
        """A stage this run computed to its end but stopped before storing (its result stays if another
        trial published one meanwhile; no lease is needed to publish a finished result)."""
        if any(s["stage"] == stage.number for s in self.from_store):
            return  # taken from the store: already there
        store.put(stage_key(self.cfg, self.bundle.fingerprint, stage.number), self.stored_payload(stage, owner))

    def train_loader(self, batch_size: int, epoch_key: int) -> Any:
        """A stage's training loader: loader processes, or (``data.device_clips``) clips on the device."""
        if self.on_device is None:
            self.on_device = wanted(self.cfg.data.device_clips, self.train_ds, self.device)
        if not self.on_device:
            return make_loader(self.train_ds, batch_size, self.cfg.data.num_workers, epoch_key=epoch_key)
        if self.device_clips is None:  # loaded once, for every stage of the run
            self.device_clips = DeviceClips(self.train_ds, self.device, self.progress)
        return self.device_clips.loader(batch_size, epoch_key)

    def payload(self, stage: Stage, epoch: int, g: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "config": self.cfg.to_dict(), "classes": self.bundle.classes,
            "stage": stage.number, "epoch": epoch, "global_epoch": g, "fingerprint": self.bundle.fingerprint,
        }

    def save_last(self, stage: Stage, epoch: int, g: int, extra: dict[str, Any]) -> None:
        ck.save(self.ckdir / ck.LAST, {
            **self.payload(stage, epoch, g), **extra, "history": self.history, "best": self.best,
            **ck.rng_state(), "from_store": self.from_store,
        })

    def stored_payload(self, stage: Stage, owner: str) -> dict[str, Any]:
        """This stage's result for the store: its best weights (shared part), rows and best epoch."""
        best = ck.load(self.ckdir / ck.best_name(stage.number))["model"]
        rows = [h for h in self.history if h["stage"] == stage.number]
        return {"state": shared_state(best, stage.number), "rows": rows, "best": self.best[str(stage.number)],
                "computed_by": owner}

    def load_stored(self, stage: Stage, offset: int, path: Path, key: str, reported: int = 0) -> None:
        """Take a stage's result from the store instead of computing it, as if it had run here. The
        callback gets the stage's epochs after ``reported`` (those a resumed run had not reported yet)."""
        stored = torch.load(path, map_location="cpu", weights_only=True)
        path.unlink(missing_ok=True)  # the store's local copy: read once
        missing = set(shared_state(self.model.state_dict(), stage.number)) - set(stored["state"])
        if missing:
            raise ResumeError(f"stored stage {stage.number} result {key[:12]} lacks {sorted(missing)[:3]}")
        self.model.load_state_dict(stored["state"], strict=False)
        apply_stage(self.model, stage.trainable, stage.optional)  # the state this stage leaves the model in
        best = stored["best"]
        self.best[str(stage.number)] = best
        rows = [{**r, "global_epoch": offset + r["epoch"], "from_store": True} for r in stored["rows"]]
        self.history.extend(rows)
        self.from_store.append({"stage": stage.number, "key": key, "computed_by": stored["computed_by"]})
        tqdm.write(f"stage {stage.number}: taken from the stage store (computed by {stored['computed_by']})")
        g = offset + stage.epochs
        ck.save(self.ckdir / ck.best_name(stage.number), self.payload(stage, best["epoch"], offset + best["epoch"]))
        self.save_last(stage, stage.epochs, g, {})
        if self.callback is not None:
            for r in rows[reported:]:
                self.callback(EpochReport(stage.number, r["epoch"], r["global_epoch"], stage.epochs,
                                          {k: v for k, v in r.items() if k not in ("stage", "epoch", "global_epoch")},
                                          r["epoch"] == best["epoch"], self.ckdir, from_store=True))


def _calibrate(model: EgoRNN, ds: ClipDataset, device: torch.device, clips: int = 16) -> None:
    loader = make_loader(ds, 4, 0, epoch_key=0)  # a seeded shuffle: clips of every user and class
    batches = []
    for i, batch in enumerate(loader):
        if i * 4 >= clips:
            break
        batches.append(normalize_frames(batch["frames"].flatten(0, 1).to(device)))
    calibrate_batchnorm(model.backbone, batches)


def finish(
    cfg: Config, out: Path, bundle: DataBundle, model: StagedModel, plan: list[Stage],
    best: dict[str, dict[str, float]], history: list[dict[str, Any]], device: torch.device,
    evaluate_test: bool, from_store: list[dict[str, Any]] | None = None,
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
        "from_store": from_store or [],
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
