"""MLflow, written only by the driver: a Ray Tune callback mirrors trials into nested runs.

Layout: one experiment per search; one parent run per search (space file, git revision, data
fingerprint, best trial, and at the end the Optuna plots and a CSV of all trials under ``search/``);
one child run per trial tagged ``mlflow.parentRunId`` with every egomodel key as a dotted param,
per-epoch metrics at step = global epoch, the best checkpoint, the validation confusion matrix and
per-class accuracy, and the trial's pictures under ``plots/`` (training curves, CAM overlays,
feedback β/γ maps; drawn by the trial with :mod:`egomodel.reporting.pictures`). Trials never touch
MLflow, so a SQLite store is never written by many processes at once.

A failed trial's run ends ``FAILED`` with tag ``egosearch.outcome=failed``, tag ``error`` holding the
exception's one-line reason (``FloatingPointError: training loss is nan ...``) and the whole Ray error
text as the artifact ``error.txt``; a trial that Ray retried carries ``egosearch.retries`` and
``egosearch.last_error``.

When the tracking server goes away during a search (the choice made here: buffer and retry)
---------------------------------------------------------------------------------------------
An unreachable store at start is a clear error before any trial runs
(:func:`tuning.tracking.mlflow_runs.check_reachable`). During the search the callback never lets MLflow
stop it:

- every write is an operation in a queue, applied in order; an operation that fails because the
  store is unreachable (connection refused, timeout, 5xx, a locked SQLite file) stays at the head of
  the queue, and everything after it waits behind it, so the order of writes is kept;
- the queue is retried on later Ray callbacks (each trial result and each step of Tune's loop), with
  a back-off from 2 s to 60 s between attempts and HTTP calls that fail at once instead of retrying for
  minutes inside MLflow's client; the driver prints one line when the store goes away and one when
  the backlog has been delivered;
- the queue is part of the callback's state, which Ray saves in the experiment's checkpoint: a driver
  that is killed while MLflow is down keeps its backlog, and ``--resume`` delivers it;
- at the end of the experiment the callback keeps retrying for ``EGOSEARCH_MLFLOW_FLUSH_TIMEOUT``
  seconds (default 120). If the store is still down then, the search stops cleanly in a resumable
  state: ``finish`` (through :func:`tuning.tracking.mlflow_runs.log_search_summary`) raises
  :class:`~tuning.tracking.mlflow_runs.TrackingError` (exit code 2) saying so, and the same command
  with ``--resume`` once the server is back delivers the backlog, registers the champion and logs the
  search's plots;
- an operation the store rejects for what it is (an invalid value, a deleted run), or one that fails
  in this module's own code, is not retried: it is dropped with a warning, so one bad write never
  blocks the rest.

Replays are harmless: runs are found again by their trial tag before one is created, metrics carry
the timestamp of their first attempt, tags and params are idempotent, artifacts are overwritten.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from egomodel.config import flatten
from tuning.space.sampling import trial_config
from tuning.space.types import SearchSpace
from tuning.tracking.mlflow_runs import note_undelivered, quick_http
from tuning.tracking.tags import OUTCOME_TAG, TRIAL_TAG
from tuning.tracking.trial_files import curves_png, error_reason, error_text
from tuning.tracking.write_retry import Dropped, flush_timeout, is_permanent, now_ms, one_line

EPOCH_METRICS = ("train_loss", "train_top1", "val_loss", "val_top1", "lr", "data_wait_fraction", "stage")
PLOTS_DIR = "plots"


# --------------------------------------------------------------------------- the write queue
@dataclass
class Op:
    """One MLflow write. ``target`` is a Ray trial id (its child run) or "" (the parent run)."""

    target: str
    kind: str  # create | batch | terminate | text | artifacts | file
    payload: dict[str, Any] = field(default_factory=dict)


class MlflowCallback(Callback):
    """Driver-side mirror of Ray trials into nested MLflow runs (picklable: ids, URIs and the queue)."""

    retry_min_s = 2.0
    retry_max_s = 60.0

    def __init__(self, tracking_uri: str, parent_id: str, space: SearchSpace, extra: dict[str, Any]) -> None:
        self.tracking_uri = tracking_uri
        self.parent_id = parent_id
        self.space = space
        self.extra = extra  # data.root, train.seed: the same for every trial
        self._runs: dict[str, str] = {}
        self._logged_epoch: dict[str, int] = {}  # per trial: the last global epoch whose metrics were logged
        self._pending: deque[Op] = deque()
        self._client: MlflowClient | None = None
        self._down_since: float | None = None
        self._next_try = 0.0
        self._delay = self.retry_min_s
        self._exp_id: str | None = None
        self._reconciled = False  # this driver has ended the runs of trials Ray no longer knows

    # ------------------------------------------------------------------ state (pickle and Ray)
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_reconciled": False}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__["_reconciled"] = False  # a restored driver looks again
        self.__dict__.setdefault("_logged_epoch", {})
        self.__dict__.setdefault("_pending", deque())
        for k, v in (("_down_since", None), ("_next_try", 0.0), ("_delay", self.retry_min_s), ("_exp_id", None)):
            self.__dict__.setdefault(k, v)

    def get_state(self) -> dict[str, Any] | None:
        """Saved by Ray with the experiment: a resumed driver finds its runs and its backlog."""
        return {"runs": dict(self._runs), "pending": list(self._pending), "logged_epoch": dict(self._logged_epoch)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._runs.update(state.get("runs", {}))
        for tid, epoch in state.get("logged_epoch", {}).items():  # a retried trial's replayed epochs stay once
            self._logged_epoch[tid] = max(epoch, self._logged_epoch.get(tid, 0))
        self._pending = deque(state.get("pending", []))
        if self._pending:
            print(f"MLflow: {len(self._pending)} writes saved by the interrupted driver will be delivered",
                  flush=True)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @property
    def pending(self) -> int:
        return len(self._pending)

    # --------------------------------------------------------------------------- queue plumbing
    def _put(self, target: str, kind: str, **payload: Any) -> None:
        self._pending.append(Op(target, kind, payload))
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Apply queued writes in order; True when nothing is left. Never raises."""
        if not self._pending:
            return True
        if not force and self._down_since is not None and time.monotonic() < self._next_try:
            return False
        with quick_http(timeout=30):
            while self._pending:
                op = self._pending[0]
                try:
                    self._apply(op)
                except Exception as e:  # noqa: BLE001 - MLflow down must never stop the search
                    if is_permanent(e):
                        print(f"warning: MLflow rejected a write ({op.kind} for "
                              f"{op.target or 'the parent run'}), dropped: {one_line(e)}", file=sys.stderr, flush=True)
                        self._pending.popleft()
                        continue
                    self._mark_down(e)
                    return False
                self._pending.popleft()
        if self._down_since is not None:
            print(f"MLflow {self.tracking_uri} is reachable again after {time.monotonic() - self._down_since:.0f} s: "
                  "every buffered write was delivered", flush=True)
            self._down_since = None
            self._delay = self.retry_min_s
        return True

    def _mark_down(self, e: Exception) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            print(f"warning: MLflow {self.tracking_uri} is unreachable ({one_line(e)}); the search goes on and "
                  "its results are buffered and retried", file=sys.stderr, flush=True)
        else:
            self._delay = min(self._delay * 2, self.retry_max_s)
        self._next_try = now + self._delay

    def _experiment_id(self) -> str:
        if self._exp_id is None:
            self._exp_id = self.client.get_run(self.parent_id).info.experiment_id
        return self._exp_id

    def _rid(self, target: str) -> str:
        if not target:
            return self.parent_id
        if target not in self._runs:
            raise Dropped(f"trial {target} has no MLflow run")
        return self._runs[target]

    def _apply(self, op: Op) -> None:
        p = op.payload
        if op.kind == "create":
            self._create(op.target, p)
            return
        rid = self._rid(op.target)
        if op.kind == "batch":
            metrics = [Metric(k, v, ts, step) for k, v, ts, step in p.get("metrics", ())]
            epoch = p.get("epoch_step")
            if epoch is not None and epoch <= self._logged_epoch.get(op.target, 0):
                metrics = []  # a replayed epoch of a retried trial: logged the first time
            tags = [RunTag(k, v) for k, v in p.get("tags", {}).items()]
            self.client.log_batch(rid, metrics=metrics, tags=tags)
            if epoch is not None:
                self._logged_epoch[op.target] = max(epoch, self._logged_epoch.get(op.target, 0))
        elif op.kind == "terminate":
            self.client.set_terminated(rid, p["status"], end_time=p["end_time"])
        elif op.kind == "text":
            self.client.log_text(rid, p["text"], p["file"])
        elif op.kind == "file":  # bytes made on the driver (a plot), uploaded as a file
            with tempfile.TemporaryDirectory() as tmp:
                f = Path(tmp) / Path(p["file"]).name
                f.write_bytes(p["data"])
                self.client.log_artifact(rid, str(f), str(Path(p["file"]).parent) if "/" in p["file"] else None)
        elif op.kind == "artifacts":
            self._log_final_artifacts(rid, p["checkpoint"])
        else:
            raise Dropped(f"unknown operation {op.kind}")

    def _create(self, trial_id: str, p: dict[str, Any]) -> None:
        """The trial's child run (found again after a driver restart or a replayed write), then its
        params: logged every time this runs, as logging a param again with its value is harmless and a
        failure between the two must not leave a run without params."""
        if trial_id not in self._runs:
            exp_id = self._experiment_id()
            found = self.client.search_runs(
                [exp_id], f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_id}'",
                max_results=1)
            if found:
                self._runs[trial_id] = found[0].info.run_id
                logged = self.client.get_metric_history(found[0].info.run_id, "stage")  # one point per epoch
                self._logged_epoch[trial_id] = max((m.step for m in logged), default=0)
            else:
                self._runs[trial_id] = self.client.create_run(
                    exp_id, start_time=p["start_time"], run_name=p["name"],
                    tags={"mlflow.parentRunId": self.parent_id, TRIAL_TAG: trial_id, OUTCOME_TAG: "running"},
                ).info.run_id
        rid = self._runs[trial_id]
        cfg = trial_config(self.space, p["config"], self.extra)
        params = [Param(k, json.dumps(v) if isinstance(v, list) else str(v))
                  for k, v in flatten(cfg.to_dict()).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(rid, params=params[i:i + 100])

    # ---------------------------------------------------------------------------- Ray's hooks
    def _ensure_run(self, trial: Any) -> None:
        if trial.trial_id in self._runs or any(op.kind == "create" and op.target == trial.trial_id
                                               for op in self._pending):
            return
        self._put(trial.trial_id, "create", name=str(trial), config=dict(trial.config), start_time=now_ms())

    def run_id(self, trial: Any) -> str | None:
        """The trial's child run id, or None while its creation waits in the queue."""
        self._ensure_run(trial)
        return self._runs.get(trial.trial_id)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._reconciled and self.flush():
            self._reconciled = self._end_orphans(trials)
        self.flush()

    def _child_runs(self, status: str = "RUNNING") -> list[Any]:
        return self.client.search_runs(
            [self._experiment_id()],
            f"tags.`mlflow.parentRunId` = '{self.parent_id}' and attributes.status = '{status}'")

    def _end_orphans(self, trials: list) -> bool:
        """A driver killed after a trial's run was created but before Ray saved that trial leaves a run
        that no restored trial continues (Ray may even run its configuration again as a new trial): end
        each such run ``KILLED``, outcome ``interrupted``, naming the trial that re-ran its configuration.
        True once done (False: MLflow did not answer; tried again at the next step)."""
        known = {t.trial_id for t in trials}
        try:
            orphans = [r for r in self._child_runs() if r.data.tags.get(TRIAL_TAG) not in known]
            for run in orphans:
                tags = {OUTCOME_TAG: "interrupted", "egosearch.interrupted": "the driver was killed before Ray "
                        "saved this trial; the resumed search does not continue it"}
                rerun = [t.trial_id for t in trials if self._params_of(t) == run.data.params]
                if rerun:
                    tags["egosearch.rerun_as"] = ",".join(rerun)
                self.client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
                self.client.set_terminated(run.info.run_id, "KILLED", end_time=now_ms())
                print(f"MLflow: run {run.info.run_id} of trial {run.data.tags.get(TRIAL_TAG)} ended as interrupted"
                      + (f" (its configuration re-ran as trial {', '.join(rerun)})" if rerun else ""), flush=True)
        except Exception as e:  # noqa: BLE001 - never stops the search; tried again at the next step
            self._mark_down(e)
            return False
        return True

    def _params_of(self, trial: Any) -> dict[str, str]:
        """The params :meth:`_create` logs for this trial's configuration."""
        cfg = trial_config(self.space, dict(trial.config), self.extra)
        return {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in flatten(cfg.to_dict()).items()}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ensure_run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._ensure_run(trial)
        step = int(result["global_epoch"])
        epoch = {**result, "val_top1": result.get("epoch_val_top1")} if result.get("final") else result
        ts = now_ms()
        metrics = [(k, float(epoch[k]), ts, step) for k in EPOCH_METRICS
                   if isinstance(epoch.get(k), (int, float)) and not isinstance(epoch.get(k), bool)]
        tags = {}
        if result.get("stage_epoch") == 1:  # a stage boundary
            tags[f"stage{result['stage']}_start_epoch"] = str(step)
        # a retried trial repeats the epochs after its last checkpoint: _apply logs each epoch once
        self._put(trial.trial_id, "batch", metrics=metrics, tags=tags,
                  epoch_step=None if result.get("final") else step)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ensure_run(trial)
        last = trial.last_result or {}
        tid = trial.trial_id
        if last.get("final"):
            finals = {"best_val_top1": last["val_top1"], "test_top1": last.get("test_top1"),  # test: table3-like
                      "trial_wall_s": last.get("trial_wall_s")}
            self._put(tid, "batch", metrics=[(k, float(v), now_ms(), int(last["global_epoch"]))
                                             for k, v in finals.items() if v is not None], tags={})
            if trial.checkpoint is not None:
                self._put(tid, "artifacts", checkpoint=trial.checkpoint)
            self._put(tid, "batch", tags={OUTCOME_TAG: "completed"})
            self._put(tid, "terminate", status="FINISHED", end_time=now_ms())
        else:  # the scheduler stopped it before its last epoch
            png = curves_png(trial)
            if png is not None:
                self._put(tid, "file", file=f"{PLOTS_DIR}/training_curves.png", data=png)
            self._put(tid, "batch", tags={OUTCOME_TAG: "early_stopped",
                                          "stopped_at_epoch": str(last.get("global_epoch"))})
            self._put(tid, "terminate", status=RunStatus.to_string(RunStatus.KILLED), end_time=now_ms())

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Ray will retry the trial from its last checkpoint: say so on its run."""
        self._ensure_run(trial)
        retries = getattr(getattr(trial, "run_metadata", None), "num_failures", None)
        self._put(trial.trial_id, "batch", tags={"egosearch.retries": str(retries),
                                                 "egosearch.last_error": error_reason(trial)})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ensure_run(trial)
        text = error_text(trial)
        reason = error_reason(trial, text)
        tid = trial.trial_id
        if text:
            self._put(tid, "text", text=text, file="error.txt")
        self._put(tid, "batch", tags={OUTCOME_TAG: "failed", "error": reason})
        self._put(tid, "terminate", status="FAILED", end_time=now_ms())

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Deliver the backlog, waiting up to ``EGOSEARCH_MLFLOW_FLUSH_TIMEOUT`` s for the store."""
        deadline = time.monotonic() + flush_timeout()
        while not self.flush(force=True) and time.monotonic() < deadline:
            time.sleep(min(self._delay, max(0.0, deadline - time.monotonic())))
        note_undelivered(self.parent_id, len(self._pending))
        if not self._pending:
            self._end_still_running()
        if self._pending:
            print(f"error: MLflow {self.tracking_uri} is still unreachable: {len(self._pending)} writes are kept in "
                  "the search's saved state; rerun the same command with --resume once the server is back",
                  file=sys.stderr, flush=True)

    def _end_still_running(self) -> None:
        """No child run stays RUNNING after a search ends: one whose end was never delivered (a driver
        killed between Ray saving the trial's end and MLflow hearing of it) ends KILLED, interrupted."""
        try:
            for run in self._child_runs():
                self.client.set_tag(run.info.run_id, OUTCOME_TAG, "interrupted")
                self.client.set_terminated(run.info.run_id, "KILLED", end_time=now_ms())
        except Exception as e:  # noqa: BLE001 - the search's results are already safe in Ray's storage
            print(f"warning: MLflow: could not end the runs still marked running: {one_line(e)}", file=sys.stderr)

    def _log_final_artifacts(self, rid: str, ckpt: Any) -> None:
        """Every file of the trial's final checkpoint folder: ``*.pt`` under ``checkpoint/``,
        ``plots/`` as it is, the rest (metrics, confusion matrix, per-class accuracy) at the top."""
        with tempfile.TemporaryDirectory() as tmp:
            ckpt.to_directory(tmp)
            for f in sorted(Path(tmp).iterdir()):
                if f.name == "last.pt":
                    continue  # optimiser state: resume material, not a result
                if f.is_dir():
                    self.client.log_artifacts(rid, str(f), f.name)
                else:
                    self.client.log_artifact(rid, str(f), "checkpoint" if f.suffix == ".pt" else None)
