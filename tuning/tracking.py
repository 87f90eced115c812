"""MLflow, written only by the driver: a Ray Tune callback mirrors trials into nested runs.

Layout: one experiment per search; one parent run per search (space file, git revision, data
fingerprint, best trial); one child run per trial tagged ``mlflow.parentRunId`` with every egomodel
key as a dotted param, per-epoch metrics at step = global epoch, the best checkpoint and the
validation confusion matrix. Trials never touch MLflow, so a SQLite store is never written by many
processes at once.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from egomodel.config import flatten
from tuning.space import SearchSpace, trial_config

PARENT_TAG = "egosearch.ray_path"
TRIAL_TAG = "ray.trial_id"
OUTCOME_TAG = "egosearch.outcome"
EPOCH_METRICS = ("train_loss", "train_top1", "val_loss", "val_top1", "lr", "data_wait_fraction", "stage")


class TrackingError(RuntimeError):
    pass


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_reachable(uri: str) -> MlflowClient:
    """Fail before any trial starts if the tracking store cannot be reached."""
    client = MlflowClient(uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as e:  # connection refused, DNS, bad scheme, unwritable sqlite
        raise TrackingError(f"MLflow tracking URI {uri} is not reachable: {type(e).__name__}: {e}") from None
    return client


def parent_run(
    client: MlflowClient, experiment: str, ray_path: str, space: SearchSpace, fingerprint: str, resume: bool
) -> str:
    """The search's parent run: found again on ``--resume``, created otherwise."""
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    found = client.search_runs([exp_id], f"tags.`{PARENT_TAG}` = '{ray_path}'", max_results=1,
                               order_by=["attributes.start_time DESC"])
    if resume and found:
        run = found[0]
        old = run.data.tags.get("data_fingerprint")
        if old != fingerprint:
            raise TrackingError(
                f"refusing to resume: the data set changed since the search started "
                f"(fingerprint {old} -> {fingerprint}); start a new search instead"
            )
        client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    run = client.create_run(exp_id, run_name=f"search-{space.name}", tags={
        PARENT_TAG: ray_path, "git_revision": git_revision(), "data_fingerprint": fingerprint,
        "space": space.name, "mlflow.note.content": space.text.split("\n", 1)[0],
    })
    rid = run.info.run_id
    client.log_text(rid, space.text, f"space/{space.path.name}")
    for k, v in {"metric": space.metric, "mode": space.mode, "num_samples": space.num_samples}.items():
        client.log_param(rid, k, v)
    return rid


class MlflowCallback(Callback):
    """Driver-side mirror of Ray trials into nested MLflow runs (picklable: ids and URIs only)."""

    def __init__(self, tracking_uri: str, parent_id: str, space: SearchSpace, extra: dict[str, Any]) -> None:
        self.tracking_uri = tracking_uri
        self.parent_id = parent_id
        self.space = space
        self.extra = extra  # data.root, train.seed: the same for every trial
        self._runs: dict[str, str] = {}
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def run_id(self, trial: Any) -> str:
        """The trial's child run, created on first sight, found again after a driver restart."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        parent = self.client.get_run(self.parent_id)
        exp_id = parent.info.experiment_id
        found = self.client.search_runs(
            [exp_id], f"tags.`{TRIAL_TAG}` = '{trial.trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_id}'",
            max_results=1)
        if found:
            rid = found[0].info.run_id
        else:
            rid = self.client.create_run(exp_id, run_name=str(trial), tags={
                "mlflow.parentRunId": self.parent_id, TRIAL_TAG: trial.trial_id, OUTCOME_TAG: "running"}).info.run_id
            cfg = trial_config(self.space, trial.config, self.extra)
            params = {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(cfg.to_dict()).items()}
            for k, v in params.items():
                self.client.log_param(rid, k, v)
        self._runs[trial.trial_id] = rid
        return rid

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        rid = self.run_id(trial)
        step = int(result["global_epoch"])
        epoch = {**result, "val_top1": result.get("epoch_val_top1")} if result.get("final") else result
        for k in EPOCH_METRICS:
            if isinstance(epoch.get(k), (int, float)) and not isinstance(epoch.get(k), bool):
                self.client.log_metric(rid, k, float(epoch[k]), step=step)
        if result.get("stage_epoch") == 1:  # a stage boundary
            self.client.set_tag(rid, f"stage{result['stage']}_start_epoch", str(step))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rid = self.run_id(trial)
        last = trial.last_result or {}
        if last.get("final"):
            self.client.log_metric(rid, "best_val_top1", float(last["val_top1"]), step=int(last["global_epoch"]))
            self._log_final_artifacts(rid, trial)
            self.client.set_tag(rid, OUTCOME_TAG, "completed")
            self.client.set_terminated(rid, "FINISHED")
        else:  # the scheduler stopped it before its last epoch
            self.client.set_tag(rid, OUTCOME_TAG, "early_stopped")
            self.client.set_tag(rid, "stopped_at_epoch", str(last.get("global_epoch")))
            self.client.set_terminated(rid, RunStatus.to_string(RunStatus.KILLED))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rid = self.run_id(trial)
        reason = str(getattr(trial, "error_message", None) or _error_text(trial))
        self.client.set_tag(rid, OUTCOME_TAG, "failed")
        self.client.set_tag(rid, "error", reason[-4900:])
        self.client.set_terminated(rid, "FAILED")

    def _log_final_artifacts(self, rid: str, trial: Any) -> None:
        ckpt = trial.checkpoint
        if ckpt is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            ckpt.to_directory(tmp)
            for f in sorted(Path(tmp).iterdir()):
                if f.name == "last.pt":
                    continue  # optimiser state: resume material, not a result
                self.client.log_artifact(rid, str(f), "checkpoint" if f.suffix == ".pt" else None)


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    try:
        return Path(path).read_text() if path else "trial failed"
    except OSError:
        return "trial failed"
