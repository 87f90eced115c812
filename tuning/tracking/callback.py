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

- every write is an operation in a queue, applied in order by one writer thread of the driver, never
  on Tune's event loop (Ray's hooks only append to the queue, so a slow store, a checkpoint download
  from S3 or an upload to MLflow never holds up scheduling). Consecutive metric, param and tag writes
  go out together through MLflow's asynchronous logging (``log_batch(synchronous=False)``, which also
  merges the writes of one run, such as the hundreds of epochs a stage taken from the stage store
  replays), and leave the queue only once MLflow confirmed them (``RunOperations.wait()``);
  creating runs, artifacts and ending runs are applied one at a time in between, so the order is kept;
- an operation that fails because the store is unreachable (connection refused, timeout, 5xx, a
  locked SQLite file) stays at the head of the queue, and everything after it waits behind it; the
  writer retries with a back-off from 2 s to 60 s between attempts, and HTTP calls fail at once
  instead of retrying for minutes inside MLflow's client; the driver prints one line when the store
  goes away and one when the backlog has been delivered;
- the queue, up to and including the writes MLflow has not confirmed yet, is part of the callback's
  state, which Ray saves in the experiment's checkpoint: a driver that is killed (even SIGKILLed, or
  while MLflow is down) keeps its backlog, and ``--resume`` delivers it;
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
the timestamp of their first attempt, tags and params are idempotent, an artifact already there with
the same size is not uploaded again. Each epoch's metrics are logged once: a batch carries its global
epoch, and an epoch at or below the last one the run holds is not logged again (a retried trial's
replayed epochs). The run's own history decides what it holds, not this callback's saved state: a
driver killed after MLflow took epochs 4 and 5 but before Ray saved the callback (which said 3) would
otherwise log them twice when ``--resume`` replays them, so a restored driver reads each run's
``stage`` history (one point per logged epoch) before its next write to that run. The final result (the
last epoch with the trial's summary: ``best_val_top1``, ``test_top1``, ``trial_wall_s``) is one batch at
the last epoch, deduplicated the same way.

What a trial's run keeps follows ``--log-checkpoints`` (:mod:`tuning.tracking.policy`).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from egomodel.config import flatten
from tuning.space.sampling import trial_config
from tuning.space.types import SearchSpace
from tuning.tracking.mlflow_runs import note_undelivered, quick_http
from tuning.tracking.policy import CHECKPOINT_DIR, logs_weights
from tuning.tracking.tags import OUTCOME_TAG, TRIAL_TAG
from tuning.tracking.trial_files import curves_png, error_reason, error_text
from tuning.tracking.write_retry import Dropped, flush_timeout, is_permanent, now_ms, one_line

EPOCH_METRICS = ("train_loss", "train_top1", "val_loss", "val_top1", "lr", "data_wait_fraction", "stage")
SUMMARY_METRICS = ("best_val_top1", "test_top1", "trial_wall_s")  # a finished trial's, at its last epoch
PLOTS_DIR = "plots"
ASYNC_BATCHES = 1000  # metric/tag writes sent to MLflow before waiting for their confirmation
MAX_METRICS, MAX_TAGS = 1000, 100  # MLflow's limits for one log_batch


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

    def __init__(self, tracking_uri: str, parent_id: str, space: SearchSpace, extra: dict[str, Any],
                 log_checkpoints: str = "best") -> None:
        logs_weights(log_checkpoints, True)  # a bad policy fails here, before the search
        self.tracking_uri = tracking_uri
        self.parent_id = parent_id
        self.space = space
        self.extra = extra  # data.root, train.seed: the same for every trial
        self.log_checkpoints = log_checkpoints
        self._runs: dict[str, str] = {}
        self._logged_epoch: dict[str, int] = {}  # per trial: the last global epoch whose metrics were logged
        self._unverified: set[str] = set()  # restored runs whose logged epochs are read from MLflow first
        self._pending: deque[Op] = deque()
        self._client: MlflowClient | None = None
        self._down_since: float | None = None
        self._next_try = 0.0
        self._delay = self.retry_min_s
        self._exp_id: str | None = None
        self._reconciled = False  # this driver has ended the runs of trials Ray no longer knows
        self._threading()

    def _threading(self) -> None:
        self._lock = threading.Lock()  # guards _pending between Tune's thread and the writer
        self._drain_lock = threading.RLock()  # one drain at a time (the writer, or flush at the end)
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._closed = False  # the experiment ended: its last drain ran in Tune's thread, no writer after it

    # ------------------------------------------------------------------ state (pickle and Ray)
    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            pending = deque(self._pending)
        state = {**self.__dict__, "_client": None, "_reconciled": False, "_pending": pending}
        for k in ("_lock", "_drain_lock", "_wake", "_writer", "_closed"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__["_reconciled"] = False  # a restored driver looks again
        self.__dict__.setdefault("_logged_epoch", {})
        self.__dict__.setdefault("_unverified", set())
        self.__dict__.setdefault("_pending", deque())
        self.__dict__.setdefault("log_checkpoints", "best")
        for k, v in (("_down_since", None), ("_next_try", 0.0), ("_delay", self.retry_min_s), ("_exp_id", None)):
            self.__dict__.setdefault(k, v)
        self._threading()

    def get_state(self) -> dict[str, Any] | None:
        """Saved by Ray with the experiment: a resumed driver finds its runs and its backlog, which holds
        every write MLflow has not confirmed yet (this driver's reconciliation excepted: a resumed one
        does its own)."""
        with self._lock:
            pending = [op for op in self._pending if op.kind != "orphans"]
        return {"runs": dict(self._runs), "pending": pending, "logged_epoch": dict(self._logged_epoch)}

    def set_state(self, state: dict[str, Any]) -> None:
        """A resumed driver: its runs, its backlog, and the epochs each run held when Ray saved this state,
        which may be fewer than it holds now (writes confirmed after the save): each restored run's history
        is read again before its next write."""
        self._runs.update(state.get("runs", {}))
        self._unverified.update(state.get("runs", {}))
        for tid, epoch in state.get("logged_epoch", {}).items():  # a retried trial's replayed epochs stay once
            self._logged_epoch[tid] = max(epoch, self._logged_epoch.get(tid, 0))
        with self._lock:
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
        """Queue a write (Tune's thread: returns at once); the writer thread applies it."""
        with self._lock:
            self._pending.append(Op(target, kind, payload))
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._closed:
            return
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._write_loop, name="egosearch-mlflow-writer", daemon=True)
            self._writer.start()
        self._wake.set()

    def _write_loop(self) -> None:
        """The writer thread: drain the queue whenever woken, and once a second while writes wait for the
        store to come back (``flush`` keeps the back-off). Ends when the queue is empty."""
        while not self._closed:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self._closed:
                return
            self.flush()
            with self._lock:
                if not self._pending and not self._wake.is_set():
                    self._writer = None
                    return

    def flush(self, force: bool = False) -> bool:
        """Apply queued writes in order, in the calling thread; True when nothing is left. Never raises.
        Without ``force``, nothing is tried before the back-off of a store that went away has passed."""
        with self._drain_lock:
            if not self._pending:
                return True
            if not force and self._down_since is not None and time.monotonic() < self._next_try:
                return False
            with quick_http(timeout=30):
                while self._pending:
                    head = self._pending[0]
                    if head.kind == "batch" and self._send_batches():
                        continue
                    if not self._apply_head(head):
                        return False
            if self._down_since is not None:
                print(f"MLflow {self.tracking_uri} is reachable again after "
                      f"{time.monotonic() - self._down_since:.0f} s: every buffered write was delivered", flush=True)
                self._down_since = None
                self._delay = self.retry_min_s
            return True

    def _apply_head(self, op: Op) -> bool:
        """Apply the queue's first write synchronously; False when the store is away (it stays queued)."""
        try:
            self._apply(op)
        except Exception as e:  # noqa: BLE001 - MLflow down must never stop the search
            if not is_permanent(e):
                self._mark_down(e)
                return False
            print(f"warning: MLflow rejected a write ({op.kind} for {op.target or 'the parent run'}), dropped: "
                  f"{one_line(e)}", file=sys.stderr, flush=True)
        with self._lock:
            self._pending.popleft()
        return True

    def _send_batches(self) -> int:
        """The metric/tag writes at the head of the queue, those of one run in a row merged into one
        ``log_batch`` (up to MLflow's limits: a stage replayed from the stage store is a few calls, not
        one per epoch), through MLflow's asynchronous logging; each leaves the queue once MLflow confirmed
        it. How many did (0: the first failed; the caller applies it synchronously, which tells a store
        that went away from a write that is wrong)."""
        with self._lock:
            group = list(islice((op for op in self._pending), ASYNC_BATCHES))
        chunks: list[dict[str, Any]] = []
        try:
            for op in group:
                self._read_logged(op.target)
        except Exception:  # noqa: BLE001 - classified when applied synchronously
            return 0
        upto = dict(self._logged_epoch)
        for op in group:
            if op.kind != "batch" or (op.target and op.target not in self._runs):
                break
            metrics, tags, epoch = self._batch_content(op, upto)
            last = chunks[-1] if chunks else None
            if last is None or last["target"] != op.target or len(last["metrics"]) + len(metrics) > MAX_METRICS \
                    or len(last["tags"] | tags) > MAX_TAGS:
                last = {"target": op.target, "metrics": [], "tags": {}, "epochs": []}
                chunks.append(last)
            last["metrics"] += metrics
            last["tags"].update(tags)  # a tag written twice in a row: the later value, as in order
            last["epochs"].append(epoch)
            if epoch is not None:
                upto[op.target] = max(epoch, upto.get(op.target, 0))
        done = 0
        try:
            handles = [self.client.log_batch(self._rid(c["target"]), metrics=c["metrics"], synchronous=False,
                                             tags=[RunTag(k, v) for k, v in c["tags"].items()])
                       if c["metrics"] or c["tags"] else None for c in chunks]
        except Exception:  # noqa: BLE001 - classified when applied synchronously
            return 0
        for chunk, handle in zip(chunks, handles):
            try:
                if handle is not None:
                    handle.wait()  # MLflow confirmed the write
            except Exception:  # noqa: BLE001 - wrapped by MLflow; the synchronous retry says what it was
                break
            for epoch in chunk["epochs"]:
                self._confirm_epoch(chunk["target"], epoch)
                with self._lock:
                    self._pending.popleft()
                done += 1
        return done

    def _batch_content(self, op: Op, upto: dict[str, int]) -> tuple[list[Metric], dict[str, str], int | None]:
        p = op.payload
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in p.get("metrics", ())]
        epoch = p.get("epoch_step")
        if epoch is not None and epoch <= upto.get(op.target, 0):
            metrics = []  # a replayed epoch of a retried trial: logged the first time
        return metrics, dict(p.get("tags", {})), epoch

    def _read_logged(self, target: str) -> None:
        """The last epoch a restored run holds, from its ``stage`` history (one point per logged epoch)."""
        if target not in self._unverified or target not in self._runs:
            return
        logged = self.client.get_metric_history(self._runs[target], "stage")
        self._confirm_epoch(target, max((m.step for m in logged), default=0))
        self._unverified.discard(target)

    def _confirm_epoch(self, target: str, epoch: int | None) -> None:
        if epoch is not None:
            self._logged_epoch[target] = max(epoch, self._logged_epoch.get(target, 0))

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
        if op.kind == "orphans":
            self._end_orphans(p["known"])
            return
        rid = self._rid(op.target)
        if op.kind == "batch":
            self._read_logged(op.target)
            metrics, tags, epoch = self._batch_content(op, self._logged_epoch)
            self.client.log_batch(rid, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
            self._confirm_epoch(op.target, epoch)
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
            self._log_trial_artifacts(rid, p["checkpoint"], p.get("weights", True), p.get("results", True))
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
        if trial.trial_id in self._runs:
            return
        with self._lock:
            queued = any(op.kind == "create" and op.target == trial.trial_id for op in self._pending)
        if queued:
            return
        self._put(trial.trial_id, "create", name=str(trial), config=dict(trial.config), start_time=now_ms())

    def run_id(self, trial: Any) -> str | None:
        """The trial's child run id, or None while its creation waits in the queue."""
        self._ensure_run(trial)
        return self._runs.get(trial.trial_id)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """At this driver's first step (after Ray restored its trials, behind the saved backlog): end the
        runs of trials Ray no longer knows."""
        if not self._reconciled:
            self._reconciled = True
            self._put("", "orphans", known=[(t.trial_id, dict(t.config)) for t in trials])

    def _child_runs(self, status: str = "RUNNING") -> list[Any]:
        return self.client.search_runs(
            [self._experiment_id()],
            f"tags.`mlflow.parentRunId` = '{self.parent_id}' and attributes.status = '{status}'")

    def _end_orphans(self, known: list[tuple[str, dict[str, Any]]]) -> None:
        """A driver killed after a trial's run was created but before Ray saved that trial leaves a run
        that no restored trial continues (Ray may even run its configuration again as a new trial): end
        each such run ``KILLED``, outcome ``interrupted``, naming the trial that re-ran its configuration.
        ``known``: the trials (id, config) Ray restored."""
        ids = {tid for tid, _ in known}
        for run in [r for r in self._child_runs() if r.data.tags.get(TRIAL_TAG) not in ids]:
            tags = {OUTCOME_TAG: "interrupted", "egosearch.interrupted": "the driver was killed before Ray "
                    "saved this trial; the resumed search does not continue it"}
            rerun = [tid for tid, config in known if self._params_of(config) == run.data.params]
            if rerun:
                tags["egosearch.rerun_as"] = ",".join(rerun)
            self.client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.set_terminated(run.info.run_id, "KILLED", end_time=now_ms())
            print(f"MLflow: run {run.info.run_id} of trial {run.data.tags.get(TRIAL_TAG)} ended as interrupted"
                  + (f" (its configuration re-ran as trial {', '.join(rerun)})" if rerun else ""), flush=True)

    def _params_of(self, config: dict[str, Any]) -> dict[str, str]:
        """The params :meth:`_create` logs for a trial's configuration."""
        cfg = trial_config(self.space, config, self.extra)
        return {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in flatten(cfg.to_dict()).items()}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ensure_run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._ensure_run(trial)
        step = int(result["global_epoch"])
        final = bool(result.get("final"))
        # the final result's scores are the kept checkpoint's; its epoch's own values are epoch_<name>
        epoch = {**result, **{k[len("epoch_"):]: v for k, v in result.items() if k.startswith("epoch_")}} \
            if final else dict(result)
        if final:  # the trial's summary goes with its last epoch, so that both are logged once
            epoch.update(best_val_top1=result.get("val_top1"), test_top1=result.get("test_top1"),
                         trial_wall_s=result.get("trial_wall_s"))
        ts = now_ms()
        metrics = [(k, float(epoch[k]), ts, step) for k in EPOCH_METRICS + (SUMMARY_METRICS if final else ())
                   if isinstance(epoch.get(k), (int, float)) and not isinstance(epoch.get(k), bool)]
        tags = {}
        if result.get("stage_epoch") == 1:  # a stage boundary
            tags[f"stage{result['stage']}_start_epoch"] = str(step)
        # a retried trial repeats the epochs after its last checkpoint: _apply logs each epoch once
        self._put(trial.trial_id, "batch", metrics=metrics, tags=tags, epoch_step=step)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ensure_run(trial)
        last = trial.last_result or {}
        tid = trial.trial_id
        if last.get("final"):  # its summary metrics went out with the final result (on_trial_result)
            if trial.checkpoint is not None:
                self._put(tid, "artifacts", checkpoint=trial.checkpoint,
                          weights=logs_weights(self.log_checkpoints, True))
            self._put(tid, "batch", tags={OUTCOME_TAG: "completed"})
            self._put(tid, "terminate", status="FINISHED", end_time=now_ms())
        else:  # the scheduler stopped it before its last epoch
            png = curves_png(trial)
            if png is not None:
                self._put(tid, "file", file=f"{PLOTS_DIR}/training_curves.png", data=png)
            if trial.checkpoint is not None and logs_weights(self.log_checkpoints, False):
                self._put(tid, "artifacts", checkpoint=trial.checkpoint, weights=True, results=False)
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
        """Deliver the backlog (also after Ctrl-C: Ray calls this when it stops), waiting up to
        ``EGOSEARCH_MLFLOW_FLUSH_TIMEOUT`` s for the store. The writer thread stops here: what is left
        stays in the saved state for ``--resume``."""
        self._closed = True
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

    def _log_trial_artifacts(self, rid: str, ckpt: Any, weights: bool, results: bool) -> None:
        """Files of a trial's checkpoint folder (from Ray's storage): its best weights (``*_best.pt``)
        under ``checkpoint/`` when ``weights``, and when ``results`` the rest, ``plots/`` as it is and the
        metrics, confusion matrix and per-class accuracy at the top. ``last.pt`` (optimiser state) is
        resume material, not a result. A file the run already has with the same size (a replayed write)
        is not uploaded again."""
        have = artifact_sizes(self.client, rid)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt.to_directory(tmp)
            for f in sorted(Path(tmp).rglob("*")):
                rel = f.relative_to(tmp)
                if f.is_dir() or f.name == "last.pt":
                    continue
                is_weights = len(rel.parts) == 1 and f.name.endswith("_best.pt")
                if not (weights if is_weights else results):
                    continue
                dest = CHECKPOINT_DIR if is_weights else (str(rel.parent) if len(rel.parts) > 1 else None)
                if have.get(f"{dest}/{f.name}" if dest else f.name) != f.stat().st_size:
                    self.client.log_artifact(rid, str(f), dest)


def artifact_sizes(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, int | None]:
    """Every artifact file of a run, with its size."""
    out: dict[str, int | None] = {}
    for a in client.list_artifacts(run_id, path):
        out.update(artifact_sizes(client, run_id, a.path) if a.is_dir else {a.path: a.file_size})
    return out
