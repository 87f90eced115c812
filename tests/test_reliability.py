"""Faults injected, nothing lost: failed trials, early-stopped and retried trials, and the MLflow server
going away, through the callback in-process (whole searches with faults: tests/test_faults.py)."""

from __future__ import annotations

import json
import pickle
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest

from tests.conftest import free_port, write_space
from tuning.space import load_space
from tuning.tracking import mlflow_runs, write_retry
from tuning.tracking.callback import MlflowCallback
from tuning.tracking.mlflow_runs import (
    TrackingError,
    artifact_root,
    check_artifact_root,
    check_reachable,
    experiment_id,
    parent_run,
)
from tuning.tracking.policy import LOG_CHECKPOINTS, logs_weights
from tuning.tracking.trial_files import error_reason

FPE = "FloatingPointError: training loss is nan (stage 1 epoch 2/3); lower the learning rate or alpha"


# ---------------------------------------------------------------------------------------- helpers
class FakeTrial:
    """What the callback reads from a Ray ``Trial``."""

    def __init__(self, trial_id: str, root: Path, config: dict | None = None) -> None:
        self.trial_id = trial_id
        self.config = config or {"model.alpha": 1.0, "model.tau": 0.2, "train.stage3.lr": 1e-3}
        self.last_result: dict = {}
        self.checkpoint = None
        self.local_path = str(root / trial_id)
        Path(self.local_path).mkdir(parents=True, exist_ok=True)
        self.run_metadata = SimpleNamespace(num_failures=0)
        self.error_file = None

    def __str__(self) -> str:
        return f"run_trial_{self.trial_id}"

    def fail(self, message: str = FPE) -> None:
        """Append to error.txt what Ray 2.60's ``Trial.handle_error`` writes for a RayTaskError."""
        from ray.exceptions import RayTaskError

        name, _, msg = message.partition(": ")
        try:
            raise {"FloatingPointError": FloatingPointError, "ValueError": ValueError}[name](msg)
        except (FloatingPointError, ValueError) as e:
            exc = RayTaskError("ImplicitFunc.train", traceback.format_exc(), e).as_instanceof_cause()
        self.run_metadata.num_failures += 1
        self.error_file = str(Path(self.local_path) / "error.txt")
        with open(self.error_file, "a") as f:
            f.write(f"Failure # {self.run_metadata.num_failures} (occurred at 2026-01-01_00-00-00)\n{exc}\n")


def epoch_result(g: int, final: bool = False) -> dict:
    stage, stage_epoch = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1), (3, 2)][g - 1]
    r = {"global_epoch": g, "stage": stage, "stage_epoch": stage_epoch, "total_epochs": 7, "final": final,
         "train_loss": 2.0 - 0.1 * g, "train_top1": 0.1 * g, "val_loss": 2.2 - 0.1 * g, "val_top1": 0.05 * g,
         "lr": 1e-3, "data_wait_fraction": 0.01}
    if final:
        r.update(epoch_val_top1=r["val_top1"], val_top1=0.3)
    return r


def final_checkpoint(root: Path):
    from ray import tune

    d = root / "final_ckpt"
    (d / "plots").mkdir(parents=True)
    (d / "stage3_best.pt").write_bytes(b"weights")
    (d / "last.pt").write_bytes(b"resume state")
    (d / "metrics.json").write_text("{}")
    (d / "per_class_val.csv").write_text("class,clips,correct,accuracy\n")
    (d / "confusion_val.png").write_bytes(b"png")
    (d / "plots" / "cam_val.png").write_bytes(b"png")
    return tune.Checkpoint.from_directory(str(d))


def run_trial_events(cb: MlflowCallback, trial: FakeTrial, epochs: range, ckpt_root: Path | None = None) -> None:
    for g in epochs:
        final = ckpt_root is not None and g == 7
        trial.last_result = epoch_result(g, final)
        cb.on_trial_result(0, [], trial, trial.last_result)
    if ckpt_root is not None:
        trial.checkpoint = final_checkpoint(ckpt_root)
        cb.on_trial_complete(0, [], trial)


def children(client: mlflow.MlflowClient, parent_id: str) -> dict[str, mlflow.entities.Run]:
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.data.tags["ray.trial_id"]: r for r in runs}


def artifact_paths(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def steps(client: mlflow.MlflowClient, run_id: str, key: str = "val_top1") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture
def space(tmp_path):
    return load_space(write_space(tmp_path))


def new_callback(uri: str, space, name: str = "exp", policy: str = "best") -> tuple[MlflowCallback, str]:
    client = check_reachable(uri)
    parent = parent_run(client, name, f"/ray/{name}", space, "fingerprint", resume=False)
    return MlflowCallback(uri, parent, space, {"data.root": "/data", "train.seed": 0}, policy), parent


# ----------------------------------------------------------------------------------- failed trials
def test_error_reason_from_rays_error_text(tmp_path):
    trial = FakeTrial("t1", tmp_path)
    assert error_reason(trial) == "trial failed (Ray wrote no error text)"
    trial.fail("ValueError: first failure")
    trial.fail(FPE)  # Ray appends one block per failure: the last one is the reason
    assert error_reason(trial) == FPE
    text = Path(trial.error_file).read_text()
    assert "Traceback" in text or "File " in text  # the whole text goes to error.txt, the tag gets one line
    from ray.exceptions import ActorDiedError

    died = text + f"Failure # 3 (occurred at x)\n{ActorDiedError()}\n"
    assert error_reason(trial, died) == "The actor died unexpectedly before finishing this task."


def test_failed_trial_is_failed_in_mlflow_with_its_reason(tmp_path, space):
    cb, parent = new_callback(f"sqlite:///{tmp_path / 'm.db'}", space)
    bad, good = FakeTrial("bad", tmp_path), FakeTrial("good", tmp_path)
    for t in (bad, good):
        cb.on_trial_start(0, [], t)
    run_trial_events(cb, bad, range(1, 2))
    bad.fail()
    cb.on_trial_recover(0, [], bad)  # Ray retries it from its last checkpoint ...
    bad.fail()
    cb.on_trial_error(0, [], bad)  # ... and gives up
    run_trial_events(cb, good, range(1, 8), tmp_path)  # the search goes on
    cb.on_experiment_end([])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    runs = children(client, parent)
    r = runs["bad"]
    assert r.info.status == "FAILED"
    assert r.data.tags["egosearch.outcome"] == "failed" and r.data.tags["error"] == FPE
    assert r.data.tags["egosearch.retries"] == "1" and r.data.tags["egosearch.last_error"] == FPE
    assert "error.txt" in artifact_paths(client, r.info.run_id)
    assert runs["good"].info.status == "FINISHED" and runs["good"].data.tags["egosearch.outcome"] == "completed"
    assert {"checkpoint/stage3_best.pt", "plots/cam_val.png", "confusion_val.png", "per_class_val.csv",
            "metrics.json"} <= artifact_paths(client, runs["good"].info.run_id)


def test_early_stopped_trial_is_killed_with_its_curves(tmp_path, space):
    cb, parent = new_callback(f"sqlite:///{tmp_path / 'm.db'}", space)
    t = FakeTrial("t", tmp_path)
    cb.on_trial_start(0, [], t)
    run_trial_events(cb, t, range(1, 5))
    with open(Path(t.local_path) / "result.json", "w") as f:  # what Ray's JSON logger wrote on the driver
        f.writelines(json.dumps(epoch_result(g)) + "\n" for g in range(1, 5))
    cb.on_trial_complete(0, [], t)  # ASHA stopped it at epoch 4
    assert cb.flush()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = children(client, parent)["t"]
    assert run.info.status == "KILLED" and run.data.tags["egosearch.outcome"] == "early_stopped"
    assert run.data.tags["stopped_at_epoch"] == "4"
    assert artifact_paths(client, run.info.run_id) == {"plots/training_curves.png"}


def test_replayed_epochs_of_a_retried_trial_are_logged_once(tmp_path, space):
    """Trials hand Ray a checkpoint every ``checkpoint_interval_s``: a retry repeats the epochs after it.
    MLflow keeps the first value of each, also when the driver itself restarted in between."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cb, parent = new_callback(uri, space)
    t = FakeTrial("t", tmp_path)
    cb.on_trial_start(0, [], t)
    run_trial_events(cb, t, range(1, 5))
    t.fail()
    cb.on_trial_recover(0, [], t)
    replayed = [{**epoch_result(g), "train_loss": 9.0} for g in (3, 4)]  # from a checkpoint at epoch 2
    for r in replayed:
        cb.on_trial_result(0, [], t, r)
    assert cb.flush()
    # the driver restarts (search --resume): a new callback finds the run and what it holds
    cb2 = MlflowCallback(uri, parent, space, {"data.root": "/data", "train.seed": 0})
    cb2.on_trial_result(0, [], t, {**epoch_result(4), "train_loss": 9.0})  # replayed once more
    cb2.on_trial_result(0, [], t, epoch_result(5))
    run_trial_events(cb2, t, range(6, 8), tmp_path)
    assert cb2.flush()
    client = mlflow.MlflowClient(uri)
    rid = children(client, parent)["t"].info.run_id
    assert steps(client, rid, "train_loss") == list(range(1, 8))
    assert 9.0 not in {m.value for m in client.get_metric_history(rid, "train_loss")}


def test_a_resumed_driver_logs_no_epoch_twice(tmp_path, space):
    """The callback's saved state (what Ray keeps with the experiment) holds the epochs already logged,
    so the epochs a resumed trial replays from its checkpoint are not logged again."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cb, parent = new_callback(uri, space)
    t = FakeTrial("t", tmp_path)
    cb.on_trial_start(0, [t], t)
    run_trial_events(cb, t, range(1, 5))
    cb.on_step_end(0, [t])
    assert cb.flush()
    saved = cb.get_state()
    resumed = MlflowCallback(uri, parent, space, {"data.root": "/data", "train.seed": 0})
    resumed.set_state(saved)  # the driver was killed; --resume restores the callback's state
    for g in (3, 4):  # the trial resumes from its checkpoint at epoch 2
        resumed.on_trial_result(0, [t], t, {**epoch_result(g), "train_loss": 9.0})
    run_trial_events(resumed, t, range(5, 8), tmp_path)
    resumed.on_step_end(0, [t])
    assert resumed.flush()
    client = mlflow.MlflowClient(uri)
    rid = children(client, parent)["t"].info.run_id
    assert steps(client, rid, "train_loss") == list(range(1, 8))
    assert 9.0 not in {m.value for m in client.get_metric_history(rid, "train_loss")}


def test_a_resumed_search_ends_the_runs_ray_lost_and_leaves_none_running(tmp_path, space):
    """Killed after a trial's run was created but before Ray saved the trial: the resumed Ray does not
    know that trial and may run its configuration again under a new id. Its run ends KILLED,
    ``interrupted``, naming the re-run; at the end of the search no child run is RUNNING."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cb, parent = new_callback(uri, space)
    kept, lost = FakeTrial("kept", tmp_path), FakeTrial("lost", tmp_path, {"model.alpha": 2.0, "model.tau": 0.1,
                                                                            "train.stage3.lr": 1e-4})
    for t in (kept, lost):
        cb.on_trial_start(0, [kept, lost], t)
    run_trial_events(cb, lost, range(1, 2))
    cb.on_step_end(0, [kept, lost])  # both runs exist, RUNNING; then the driver is SIGKILLed
    assert cb.flush()
    resumed = MlflowCallback(uri, parent, space, {"data.root": "/data", "train.seed": 0})
    resumed.set_state(cb.get_state())
    rerun = FakeTrial("rerun", tmp_path, dict(lost.config))  # Ray's searcher asked for it again
    resumed.on_step_end(0, [kept, rerun])
    assert resumed.flush()
    client = mlflow.MlflowClient(uri)
    runs = children(client, parent)
    assert runs["lost"].info.status == "KILLED" and runs["lost"].data.tags["egosearch.outcome"] == "interrupted"
    assert runs["lost"].data.tags["egosearch.rerun_as"] == "rerun"
    assert runs["kept"].info.status == "RUNNING"  # Ray continues it
    run_trial_events(resumed, kept, range(1, 8), tmp_path)
    resumed.on_trial_start(0, [kept, rerun], rerun)
    resumed.on_experiment_end([kept, rerun])  # rerun's end never reached MLflow
    runs = children(client, parent)
    assert runs["kept"].info.status == "FINISHED"
    assert all(r.info.status != "RUNNING" for r in runs.values()), {k: r.info.status for k, r in runs.items()}
    assert runs["rerun"].data.tags["egosearch.outcome"] == "interrupted"


# ------------------------------------------------------------------------ what MLflow keeps
def test_log_checkpoints_decides_which_runs_keep_weights(tmp_path, space):
    """Issue 13, defect 9: ``--log-checkpoints``. ``best``: finished trials only; ``all``: an early-stopped
    trial also keeps the best weights of its last Ray checkpoint (never the resume state); ``none`` and
    ``champion-only``: no weights while the search runs, the finished trial's results still logged."""
    assert [logs_weights(p, True) for p in LOG_CHECKPOINTS] == [True, True, False, False]
    assert [logs_weights(p, False) for p in LOG_CHECKPOINTS] == [False, True, False, False]
    with pytest.raises(ValueError, match="--log-checkpoints 'every'"):
        new_callback(f"sqlite:///{tmp_path / 'm.db'}", space, policy="every")
    from ray import tune

    kept = {}
    for policy in ("all", "none"):
        cb, parent = new_callback(f"sqlite:///{tmp_path / 'm.db'}", space, policy, policy)
        done, stopped = FakeTrial("done", tmp_path / policy), FakeTrial("stopped", tmp_path / policy)
        run_trial_events(cb, done, range(1, 8), tmp_path / policy)
        run_trial_events(cb, stopped, range(1, 5))
        resume = tmp_path / policy / "resume_ckpt"  # Ray's last checkpoint of the stopped trial, in stage 2
        resume.mkdir()
        (resume / "last.pt").write_bytes(b"resume state")
        (resume / "stage2_best.pt").write_bytes(b"weights")
        stopped.checkpoint = tune.Checkpoint.from_directory(str(resume))
        cb.on_trial_complete(0, [], stopped)
        cb.on_experiment_end([])
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
        kept[policy] = {t: artifact_paths(client, r.info.run_id) for t, r in children(client, parent).items()}
    assert {"checkpoint/stage3_best.pt", "metrics.json", "plots/cam_val.png"} <= kept["all"]["done"]
    assert kept["all"]["stopped"] == {"checkpoint/stage2_best.pt"}
    assert {"metrics.json", "plots/cam_val.png"} <= kept["none"]["done"]
    assert not any(p.startswith("checkpoint/") for p in kept["none"]["done"]) and kept["none"]["stopped"] == set()


def test_artifacts_go_beside_a_sqlite_store_not_where_the_search_started(tmp_path, monkeypatch):
    (tmp_path / "started_here").mkdir()
    monkeypatch.chdir(tmp_path / "started_here")
    store = tmp_path / "store" / "mlflow.db"
    store.parent.mkdir()
    assert artifact_root(f"sqlite:///{store}", None) == str(tmp_path / "store" / "mlartifacts")
    assert artifact_root(f"sqlite:///{store}", "arts") == str(tmp_path / "started_here" / "arts")
    assert artifact_root("http://head:5000", None) is None  # the tracking server decides
    assert artifact_root("http://head:5000", "s3://bucket/mlflow") == "s3://bucket/mlflow"
    client = check_reachable(f"sqlite:///{store}")
    exp = client.get_experiment(experiment_id(client, "e", artifact_root(f"sqlite:///{store}", None)))
    assert exp.artifact_location.removeprefix("file://") == str(tmp_path / "store" / "mlartifacts")
    with pytest.raises(TrackingError, match="already keeps its artifacts at .*another --experiment"):
        experiment_id(client, "e", str(tmp_path / "elsewhere"), explicit=True)
    for bad in ("/dev/null/arts", "s3://no-such-bucket-egosearch/arts"):  # MLflow could never write there
        with pytest.raises(TrackingError, match=f"--artifact-root {bad}: MLflow cannot store artifacts there"):
            check_artifact_root(bad)
    assert list((tmp_path / "started_here").iterdir()) == []


# ------------------------------------------------------------- writes off Tune's event loop
def test_trial_events_return_at_once_while_mlflow_is_slow_and_a_killed_driver_loses_nothing(
        tmp_path, space, monkeypatch):
    """Issue 13, defect 7. MLflow answers no write until the test lets it: Ray's hooks still return at
    once (a 100-epoch trial, e.g. a stage taken from the stage store, and its final checkpoint), and the
    saved state holds every unconfirmed write. That state, replayed by a resumed driver on a copy of the
    store made at that moment (the first driver never gets an answer: it was SIGKILLed), delivers every
    epoch once, the params and the artifacts. Once MLflow answers, the first driver's own writes land
    too, batched: far fewer store calls than epochs."""
    import shutil
    import threading

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    gate, entered, calls, real = threading.Event(), threading.Event(), [], SqlAlchemyStore.log_batch

    def slow_log_batch(self, run_id, metrics, params, tags):
        if self.db_uri == uri and armed:  # the first driver's store answers once the test lets it
            entered.set()
            gate.wait(120)
            calls.append(len(metrics))
        return real(self, run_id, metrics, params, tags)

    armed = False
    monkeypatch.setattr(SqlAlchemyStore, "log_batch", slow_log_batch)  # before MLflow's async queue binds it
    cb, parent = new_callback(uri, space)
    armed = True
    t = FakeTrial("t", tmp_path)
    t0 = time.monotonic()
    cb.on_trial_start(0, [t], t)
    for g in range(1, 101):
        cb.on_trial_result(0, [t], t, {"global_epoch": g, "stage": 2, "stage_epoch": g, "total_epochs": 101,
                                       "final": False, "train_loss": 1.0 / g, "val_top1": g / 100})
    t.last_result = {**epoch_result(7, final=True), "global_epoch": 101, "total_epochs": 101}
    cb.on_trial_result(0, [t], t, t.last_result)  # the last epoch with the trial's summary, as Ray passes it
    t.checkpoint = final_checkpoint(tmp_path)
    cb.on_trial_complete(0, [t], t)
    assert time.monotonic() - t0 < 5, "Ray's hooks waited for MLflow"
    assert entered.wait(60)  # the writer thread waits for MLflow's answer to its first write
    saved = pickle.loads(pickle.dumps(cb.get_state()))  # what Ray keeps with the experiment now
    assert not calls and [op.kind for op in saved["pending"]] == ["create"] + ["batch"] * 101 + [
        "artifacts", "batch", "terminate"]
    shutil.copy2(tmp_path / "m.db", tmp_path / "copy.db")  # the store as the killed driver left it
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    resumed = MlflowCallback(copy, parent, space, {"data.root": "/data", "train.seed": 0})
    resumed.set_state(saved)
    resumed.on_experiment_end([t])
    gate.set()  # MLflow answers the first driver now
    assert cb.flush(force=True) and cb.pending == 0
    batched = [n for n in calls if n]  # store calls that carried metrics (the params' call has none)
    assert sum(batched) == 100 * 3 + 8 and len(batched) <= 3, calls  # 3 metrics an epoch, 7 + best_val_top1 last
    for store in (uri, copy):
        client = mlflow.MlflowClient(store)
        (run,) = children(client, parent).values()
        assert steps(client, run.info.run_id, "train_loss") == list(range(1, 102)), store
        assert run.info.status == "FINISHED" and run.data.params["model.alpha"] == "1.0"
        assert {"checkpoint/stage3_best.pt", "metrics.json"} <= artifact_paths(client, run.info.run_id)


# --------------------------------------------------------------------- MLflow server goes away
def test_mlflow_server_killed_mid_search_nothing_lost(tmp_path, space, server, monkeypatch, capsys):
    """Buffer and retry: the server is SIGKILLed between trial results, the driver is restarted from
    the state Ray saves while the server is still down, then the server comes back."""
    server.start()
    cb, parent = new_callback(server.uri, space)
    at_start = pickle.dumps(cb)  # what Ray keeps in tuner.pkl
    a, b = FakeTrial("a", tmp_path), FakeTrial("b", tmp_path)
    cb.on_trial_start(0, [], a)
    run_trial_events(cb, a, range(1, 3))
    assert cb.flush() and cb.pending == 0

    server.kill()
    t0 = time.monotonic()
    cb.on_trial_start(0, [], b)  # b's run cannot be created now
    run_trial_events(cb, a, range(3, 8), tmp_path)  # a finishes while the server is down
    run_trial_events(cb, b, range(1, 3))
    b.fail()
    cb.on_trial_error(0, [], b)
    for _ in range(20):
        cb.on_step_end(0, [])
    assert time.monotonic() - t0 < 30, "callbacks must not block while MLflow is down"
    assert not cb.flush(force=True) and cb.pending > 0
    assert "unreachable" in capsys.readouterr().err

    # the experiment ends with the server still down: a clean, resumable stop
    monkeypatch.setenv(write_retry.FLUSH_TIMEOUT_ENV, "1")
    cb.on_experiment_end([])
    assert mlflow_runs.undelivered(parent) == cb.pending > 0
    with pytest.raises(TrackingError, match="--resume"):
        mlflow_runs.log_search_summary(mlflow.MlflowClient(server.uri), parent,
                                       SimpleNamespace(experiment_path=None), space)

    # a new driver (Ray restores the callback from tuner.pkl, then its saved state), server back
    saved = pickle.loads(pickle.dumps(cb.get_state()))
    cb2 = pickle.loads(at_start)
    cb2.set_state(saved)
    server.start()
    cb2.on_experiment_end([])
    assert cb2.pending == 0 and mlflow_runs.undelivered(parent) == 0

    client = mlflow.MlflowClient(server.uri)
    runs = children(client, parent)
    assert sorted(runs) == ["a", "b"]  # one run per trial: none created twice
    ra, rb = runs["a"], runs["b"]
    assert steps(client, ra.info.run_id) == list(range(1, 8))  # every epoch, each once
    assert steps(client, ra.info.run_id, "train_loss") == list(range(1, 8))
    assert [m.value for m in client.get_metric_history(ra.info.run_id, "best_val_top1")] == [0.3]
    assert ra.info.status == "FINISHED" and ra.data.tags["egosearch.outcome"] == "completed"
    assert {f"stage{s}_start_epoch" for s in (1, 2, 3)} <= set(ra.data.tags)
    assert ra.data.params["model.alpha"] == "1.0"
    assert {"checkpoint/stage3_best.pt", "plots/cam_val.png", "metrics.json"} <= artifact_paths(client, ra.info.run_id)
    assert steps(client, rb.info.run_id) == [1, 2]
    assert rb.info.status == "FAILED" and rb.data.tags["error"] == FPE
    assert rb.data.params["train.stage3.lr"] == "0.001"
    # the search's summary goes through now
    logged = mlflow_runs.log_search_summary(client, parent, SimpleNamespace(experiment_path=None), space)
    assert "search/trials.csv" in logged


def test_a_write_mlflow_rejects_is_dropped_not_blocking(tmp_path, space, capsys):
    cb, parent = new_callback(f"sqlite:///{tmp_path / 'm.db'}", space)
    t = FakeTrial("t", tmp_path)
    cb.on_trial_start(0, [], t)
    cb._put("t", "batch", tags={"x" * 300: "bad key"})  # MLflow: INVALID_PARAMETER_VALUE, retrying cannot help
    run_trial_events(cb, t, range(1, 8), tmp_path)
    assert cb.flush() and cb.pending == 0
    assert "rejected a write" in capsys.readouterr().err
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = children(client, parent)["t"]
    assert steps(client, run.info.run_id) == list(range(1, 8)) and run.info.status == "FINISHED"


def test_unreachable_at_start_is_a_clear_error():
    for uri in (f"http://127.0.0.1:{free_port()}", "badscheme://x"):
        t0 = time.monotonic()
        with pytest.raises(TrackingError, match="not reachable"):
            check_reachable(uri)
        assert time.monotonic() - t0 < 20
