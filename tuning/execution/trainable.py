"""The Ray Tune trainable: one trial = egomodel's stages for one sampled configuration.

It only translates: Optuna's sample -> egomodel config, egomodel's per-epoch callback ->
``ray.tune.report`` (with a resume checkpoint every ``checkpoint_interval_s``),
``ray.tune.get_checkpoint()`` -> ``resume=True``.
MLflow is written by the driver (see :mod:`tuning.tracking`), never from here.

Fault injection (a hook for tests, never set in normal use): with ``EGOSEARCH_FAULT_KILL_AT_EPOCH=N``
in the environment of the Ray workers, a trial's worker process SIGKILLs itself right after the first
optimiser step of global epoch N, i.e. mid-epoch, with weights changed since the last checkpoint. It
fires once per trial: it first writes ``fault_killed`` into the trial's local working folder
(``tune.get_context().get_trial_dir()``, kept for the Ray session), and a trial that finds that file
(Ray's retry) runs through.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from torch.optim.optimizer import register_optimizer_step_post_hook

from egomodel.model import checkpoint as ck
from egomodel.training.engine import EpochReport, train
from egomodel.training.stages import stage_plan
from tuning.execution.gpu_check import check_trial
from tuning.execution.stage_store import StageStore
from tuning.execution.storage_check import read_marker
from tuning.execution.weights_check import check_in_trial
from tuning.space.sampling import runtime_overrides, trial_config
from tuning.space.types import SearchSpace

# what a finished trial hands to MLflow (the test files only where the space sets evaluate_test)
FINAL_FILES = ("metrics.json", "confusion_val.png", "per_class_val.csv", "confusion_test.png", "per_class_test.csv",
               "config.yaml", "plots")
PLOTS = "plots"  # training curves, CAM overlays, feedback beta/gamma maps (egomodel.reporting.pictures)
FAULT_KILL_ENV = "EGOSEARCH_FAULT_KILL_AT_EPOCH"  # tests only: see the module docstring
FAULT_MARKER = "fault_killed"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares: passed once through ``tune.with_parameters``."""

    space: SearchSpace
    data_root: str
    seed: int
    store_uri: str | None = None  # the stage store (under the Ray storage path); None: no reuse
    storage: str | None = None  # the search's storage and the marker the driver wrote there: each trial
    storage_marker: str | None = None  # reads it first (a node that cannot see the storage fails at once)
    leases: Any = None  # the driver's stage-store lease actor (tuning.execution.leases.ActorLeases)
    # global epochs that always hand Ray a checkpoint: a promotion scheduler's rungs, where a trial may pause
    checkpoint_epochs: tuple[int, ...] = ()


def total_epochs(cfg: Any) -> int:
    return sum(s.epochs for s in stage_plan(cfg.model.variant, cfg.train))


def _checkpoint_dir(ckdir: Path, stage: int, extra: Path | None = None) -> Path:
    """Hard-link (or copy) the resume state into a fresh folder for ``tune.report``; the final one
    (``extra``: the finished run's files) has no resume state (``last.pt``), only results."""
    tmp = Path(tempfile.mkdtemp(prefix="egockpt-"))
    names = [ck.best_name(stage)] if extra is not None else [ck.LAST, ck.best_name(stage)]
    for name in names:
        src = ckdir / name
        if src.exists():
            try:
                os.link(src, tmp / name)
            except OSError:
                shutil.copy2(src, tmp / name)
    if extra is not None:
        for name in FINAL_FILES:
            if (extra / name).is_dir():
                shutil.copytree(extra / name, tmp / name)
            elif (extra / name).exists():
                shutil.copy2(extra / name, tmp / name)
    return tmp


def _scratch(trial_dir: Path) -> Path:
    """The trial's scratch folder (its checkpoints after every epoch, hundreds of MB): in the trial's
    working directory, which Ray keeps apart from what the driver uploads. Under the trial directory, a
    trial on the driver's node had its scratch copied into the storage folder by the driver's syncing (a
    smoke search left 2.4 GB there). Ray 2.60 names that folder only on the session object."""
    try:
        from ray.train._internal.session import get_session

        return Path(get_session().storage.trial_working_directory) / "work"
    except Exception:  # noqa: BLE001 - another Ray: the trial directory, as before
        return trial_dir / "work"


def _local_is_newer(ckdir: Path, restored: tune.Checkpoint) -> bool:
    """Whether this node still holds a later resume state (``last.pt``) than Ray's checkpoint: a retried
    trial's dead attempt wrote one after every epoch, Ray got one every ``checkpoint_interval_s``."""
    local = ckdir / ck.LAST
    if not local.exists():
        return False
    with restored.as_directory() as d:
        theirs = Path(d) / ck.LAST
        if not theirs.exists():
            return True
        try:
            return ck.load(local)["global_epoch"] > ck.load(theirs)["global_epoch"]
        except ValueError:  # an unreadable local state is never preferred
            return False


def _plots(checkpoint: Path, out: Path, history: list | None) -> None:
    """The trial's pictures; a plotting failure is printed, never a failed trial."""
    from egomodel.reporting.pictures import model_plots

    shutil.rmtree(out, ignore_errors=True)
    try:
        model_plots(checkpoint, out, history=history)
    except Exception as e:  # noqa: BLE001 - pictures are a convenience, the trial's result is not
        print(f"warning: could not draw the trial's plots: {type(e).__name__}: {e}")


def _fault_arm(trial_dir: Path) -> Any:
    """``arm(done)``, called after each finished global epoch (0 before the first): when the next epoch
    is the one ``EGOSEARCH_FAULT_KILL_AT_EPOCH`` names, its first optimiser step kills this process."""
    at = os.environ.get(FAULT_KILL_ENV, "")
    marker = trial_dir / FAULT_MARKER
    if not at or marker.exists():
        return lambda done: None

    def kill(*_: Any) -> None:
        marker.write_text(f"pid {os.getpid()} killed in global epoch {at}\n")
        os.kill(os.getpid(), signal.SIGKILL)

    def arm(done: int) -> None:
        if done + 1 == int(at):
            register_optimizer_step_post_hook(kill)

    return arm


def trial_cost(space: SearchSpace, cfg: Any) -> dict[str, float]:
    """A multi-objective search's trials report their configuration's inference cost with every result
    (``gflops``, ``params_m``: egomodel.cost, counted once per configuration and cached)."""
    if not space.objectives:
        return {}
    from egomodel.cost import clip_cost

    return clip_cost(cfg).as_dict()


def kept_score(metric: str, final: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """A finished trial's score under a metric other than ``val_top1``: the metric at the epoch whose weights
    the trial hands over, with its last epoch's own value as ``epoch_<metric>``.

    The engine keeps, per stage, the checkpoint of the best validation top-1 (``stage<n>_best.pt``: what
    the next stage starts from, what the stage store shares, what is registered), so ranking trials by
    ``val_loss`` at their last epoch, or at its own best epoch, would rank weights that no one keeps. The
    value at the kept epoch is the registered model's (a per-metric checkpoint would change what every
    stage starts from). ``val_top1`` is the kept checkpoint's re-evaluation, as before; {} when the metric
    is not an epoch metric (a cost such as ``gflops``) or the kept epoch is not in the history."""
    if metric == "val_top1" or metric not in last:
        return {}
    stages = final.get("stages") or {}
    if not stages:
        return {}
    stage = max(stages, key=int)
    epoch = stages[stage]["best_epoch"]
    kept = [h for h in final.get("history") or () if str(h.get("stage")) == stage and h.get("epoch") == epoch]
    if not kept or metric not in kept[0]:
        return {}
    return {metric: kept[0][metric], f"epoch_{metric}": last[metric]}


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    started = time.perf_counter()  # the trial's own wall time, reported as trial_wall_s
    if setup.storage_marker:
        read_marker(setup.storage, setup.storage_marker)
    cfg = trial_config(setup.space, config, runtime_overrides(setup.space, setup.data_root, setup.seed))
    check_trial(cfg.train.device)  # a GPU from Ray that PyTorch cannot use: fail now, not train on the CPU
    check_in_trial(cfg.model.backbone, cfg.model.pretrained)  # a node launched after the search's check
    trial_dir = Path(tune.get_context().get_trial_dir())
    work = _scratch(trial_dir)
    ckdir = work / "checkpoints"
    restored = tune.get_checkpoint()
    if restored is not None and not _local_is_newer(ckdir, restored):  # a retry, or a restored search
        restored.to_directory(str(ckdir))
    # a retry on the same node resumes from its dead attempt's own last epoch when that is newer
    resume = (ckdir / ck.LAST).exists()
    n_total = total_epochs(cfg)
    cost = trial_cost(setup.space, cfg)
    held: list[dict[str, Any]] = []
    last_checkpoint = [time.monotonic()]  # Ray gets a resume checkpoint every checkpoint_interval_s
    fault = _fault_arm(trial_dir)
    node_id = ray.get_runtime_context().get_node_id()  # in every report: which node ran the trial

    def report(r: EpochReport) -> None:
        metrics = {**r.metrics, "stage": r.stage, "stage_epoch": r.epoch, "global_epoch": r.global_epoch,
                   "total_epochs": n_total, "final": False, "node_id": node_id, **cost}
        if r.from_store:
            metrics["from_store"] = True
        if r.global_epoch == n_total:
            # ASHA stops a trial once it reports max_t: the last epoch goes out with the final summary
            held.append(metrics)
            return
        now = time.monotonic()
        due = now - last_checkpoint[0] >= setup.space.checkpoint_interval_s or r.global_epoch in setup.checkpoint_epochs
        if not due or (r.from_store and r.epoch < r.stage_epochs):  # replayed: one checkpoint per stored stage
            tune.report(metrics)
        else:
            folder = _checkpoint_dir(r.checkpoint_dir, r.stage)
            try:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            last_checkpoint[0] = now
        fault(r.global_epoch)

    store = StageStore(setup.store_uri, leases=setup.leases) if setup.store_uri else None
    trial_id = tune.get_context().get_trial_id()
    if not resume:
        fault(0)
    try:
        final = train(cfg, work, callback=report, resume=resume, evaluate_test=setup.space.evaluate_test,
                      progress=False, store=store, owner=f"trial {trial_id}")
    except SystemExit:  # Ray stopped the trial (early stopping) inside tune.report: it will not resume
        shutil.rmtree(work, ignore_errors=True)
        raise
    last_stage = stage_plan(cfg.model.variant, cfg.train)[-1].number
    if setup.space.plots:
        _plots(ckdir / ck.best_name(last_stage), work / PLOTS, final.get("history"))
    folder = _checkpoint_dir(ckdir, last_stage, extra=work)
    summary = {k: v for k, v in final.items() if k not in ("history", "classes")}
    (folder / "summary.json").write_text(json.dumps(summary))
    last = held[-1] if held else {"global_epoch": n_total, "total_epochs": n_total, "stage": last_stage,
                                  "node_id": node_id}
    # what a user keeps is in `folder` now: free the node's scratch copy (hundreds of MB of checkpoints per
    # trial, which Ray never deletes) before the last report, since Ray may end this function inside it
    shutil.rmtree(work, ignore_errors=True)
    try:
        # the search's metric is the best checkpoint's validation score (the model a user would take)
        tune.report(
            {**last, **cost, "epoch_val_top1": last.get("val_top1"), "val_top1": final["val_top1"], "final": True,
             "mean_data_wait_fraction": final["data_wait_fraction"],
             "trial_wall_s": time.perf_counter() - started,  # training, pictures, checkpoint hand-over
             **kept_score(setup.space.metric, final, last),  # any other metric: the kept weights' value too
             **({"test_top1": final["test_top1"]} if final.get("test_top1") is not None else {})},
            checkpoint=tune.Checkpoint.from_directory(str(folder)),
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
