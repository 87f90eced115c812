"""One seed of a retrain: what :mod:`tuning.retrain` runs in its own process, or as a Ray task on a GPU
worker. The seed writes its own MLflow child run (the tracking store is reachable from every node; the
worker's disk is not the driver's), so the driver only aggregates.

Resume: a seed trains in ``out`` on the node that runs it and continues from ``out/checkpoints`` when
they are there. Elsewhere (another node, a fresh worker) it continues from what its run keeps under the
artifact folder ``resume/``: the checkpoints at the end of each stage, and the whole seed folder when the
seed fails with an error. A finished seed logs its final checkpoint (``checkpoint/``, what
``tuning.export --run-id`` reads), metrics, confusion matrix and per-class table.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED_TAG = "retrain_seed"  # a seed's child run: its training seed
RESUME = "resume"  # artifact folder of a seed's resume state
CHECKPOINTS = "checkpoint"  # as a trial run: the final *_best.pt (tuning.export)
FINAL_FILES = ("metrics.json", "confusion_test.png", "per_class_test.csv", "config.yaml")


@dataclass(frozen=True)
class SeedJob:
    tracking_uri: str
    run_id: str  # the seed's child run (created by the driver)
    config: dict[str, Any]  # the egomodel config, this seed's train.seed included
    out: str  # the seed's working folder on the node that runs it
    on_ray: bool = False  # a Ray task: check that a GPU Ray assigned is usable first


def logged_params(cfg: Any) -> dict[str, str]:
    """An egomodel config as MLflow params, as the search logs a trial's (lists as JSON)."""
    from egomodel.config import flatten

    return {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in flatten(cfg.to_dict()).items()}


def log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    """All of ``params`` in a few requests (MLflow takes at most 100 per batch)."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def _restore(client: Any, run_id: str, out: Path) -> bool:
    """Fill ``out`` from the run's ``resume/`` artifacts when this node has no checkpoints of the seed;
    whether there is now a state to resume from."""
    if (out / "checkpoints" / "last.pt").is_file():
        return True
    if not client.list_artifacts(run_id, RESUME):
        return False
    tmp = Path(tempfile.mkdtemp(prefix="retrain-resume-"))
    try:
        got = Path(client.download_artifacts(run_id, RESUME, str(tmp)))
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(got, out, dirs_exist_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"seed run {run_id}: continuing from its resume state in MLflow", flush=True)
    return (out / "checkpoints" / "last.pt").is_file()


def run_seed(job: SeedJob) -> dict[str, Any]:
    """Train one seed (resuming what it left), log it into its run; its final metrics."""
    import mlflow

    from egomodel.config import from_dict
    from egomodel.model import checkpoint as ck
    from egomodel.training.engine import EpochReport, train
    from egomodel.training.stages import stage_plan
    from tuning.execution.stage_store import StageStore

    cfg = from_dict(job.config, {})
    if job.on_ray:
        from tuning.execution.gpu_check import check_trial

        check_trial(cfg.train.device)
    client = mlflow.MlflowClient(job.tracking_uri)
    out = Path(job.out)
    client.update_run(job.run_id, status="RUNNING")
    try:
        resume = _restore(client, job.run_id, out)

        def stage_done(r: EpochReport) -> None:  # a node lost later resumes from here on another one
            if r.epoch == r.stage_epochs:
                client.log_artifacts(job.run_id, str(r.checkpoint_dir), f"{RESUME}/checkpoints")

        # two_stream trains its streams first: through a stage store of the seed's own, as a search's trial
        store = StageStore(str(out / "stage_store")) if cfg.model.variant == "two_stream" else None
        final = train(cfg, out, callback=stage_done, resume=resume, progress=False, store=store,
                      owner=f"retrain seed {cfg.train.seed}")
    except BaseException:
        if out.is_dir():
            client.log_artifacts(job.run_id, str(out), RESUME)
        client.set_terminated(job.run_id, "FAILED")
        raise
    last = stage_plan(cfg.model.variant, cfg.train)[-1].number
    client.log_artifact(job.run_id, str(out / "checkpoints" / ck.best_name(last)), CHECKPOINTS)
    for name in FINAL_FILES:
        if (out / name).is_file():
            client.log_artifact(job.run_id, str(out / name))
    client.log_metric(job.run_id, "test_top1", float(final["test_top1"]))
    client.set_terminated(job.run_id, "FINISHED")
    return {k: v for k, v in final.items() if k not in ("history", "classes")}
