"""A whole smoke search on local Ray with MLflow, the champion, retrain, resume after a killed
driver, and the errors that must come before any trial starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from tests.conftest import client_of, env, kill_session, load_study, search_cmd, write_space
from tuning.search import main as search_main


@pytest.fixture
def searched(smoke_search):
    return smoke_search.folder, smoke_search.stdout, smoke_search.study_trials_seen


def test_smoke_search_records_everything_in_mlflow(searched):
    tmp, out, _ = searched
    assert "best trial" in out and "mlflow ui --backend-store-uri" in out and "tuning.retrain --run-id" in out
    assert "--epochs-scale 0.01" in out  # the suggested retrain keeps the smoke search's short schedule
    client = client_of(tmp)
    exp = client.get_experiment_by_name("test_space")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    for tag in ("git_revision", "data_fingerprint", "best_trial_id", "best_run_id", "champion"):
        assert parent.data.tags.get(tag), tag
    assert parent.data.tags["optuna_storage"] == f"sqlite:///{tmp / 'optuna.db'}"
    assert parent.data.tags["optuna_study"] == "test_space"
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "space")] == ["space/test_space.yaml"]
    for child in children:
        params = child.data.params
        for key in ("model.alpha", "model.tau", "data.frames", "data.image_size", "train.stage3.lr",
                    "train.stage3.trainable", "model.variant"):
            assert key in params, key
        outcome = child.data.tags["egosearch.outcome"]
        assert outcome in ("completed", "early_stopped")
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_top1")]
        assert steps == sorted(set(steps)) and steps[0] == 1
        if outcome == "completed":
            assert child.info.status == "FINISHED" and steps[-1] == 7
            assert 0 < child.data.metrics["trial_wall_s"] < 600  # the trial's own wall time
            assert {"stage1_start_epoch", "stage2_start_epoch", "stage3_start_epoch"} <= set(child.data.tags)
            arts = {a.path for a in client.list_artifacts(child.info.run_id)}
            assert {"checkpoint", "confusion_val.png", "per_class_val.csv"} <= arts
            assert any(a.path.endswith("_best.pt") for a in client.list_artifacts(child.info.run_id, "checkpoint"))
        else:
            assert child.info.status == "KILLED"


def test_a_search_started_elsewhere_writes_nothing_where_it_started(smoke_search):
    """Issue 13, defect 9: with every store named by a flag, the folder the search was started from stays
    empty; MLflow's artifacts (checkpoints, the champion model) are beside its SQLite store."""
    assert sorted(p.name for p in smoke_search.started_in.iterdir()) == []
    client = client_of(smoke_search.folder)
    exp = client.get_experiment_by_name("test_space")
    assert exp.artifact_location.removeprefix("file://") == str(smoke_search.folder / "mlartifacts")
    assert list((smoke_search.folder / "mlartifacts").rglob("stage*_best.pt"))
    (parent,) = client.search_runs([exp.experiment_id], "tags.`egosearch.ray_path` != ''")
    assert parent.data.params["log_checkpoints"] == "best"


def test_champion_loads_and_predicts(searched):
    tmp, *_ = searched
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/egosearch-test_space@champion")
    classes = model.metadata.metadata["classes"]
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 3, 64, 64)).astype(np.float32)  # pixel values
    probs = np.asarray(model.predict(x))
    assert probs.shape == (2, len(classes)) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_optuna_study_matches_ray_outcomes(searched):
    """The study in optuna.db (as optuna.load_study and optuna-dashboard open it): one trial per Ray trial,
    each epoch at its global epoch; a pruned trial ends on a rung (5 or 6) with that epoch's value."""
    from ray.tune.search.optuna import OptunaSearch

    tmp, _, seen = searched
    assert seen and max(seen) >= 1  # readable while the search ran
    study = load_study(tmp)
    client = client_of(tmp)
    runs = client.search_runs([client.get_experiment_by_name("test_space").experiment_id],
                              "tags.`egosearch.outcome` != ''")
    outcomes = sorted(r.data.tags["egosearch.outcome"] for r in runs)
    expected = sorted("COMPLETE" if o == "completed" else "PRUNED" for o in outcomes)
    assert sorted(t.state.name for t in study.trials) == expected
    for t in study.trials:
        steps = sorted(t.intermediate_values)
        assert steps == list(range(1, steps[-1] + 1))
        assert steps[-1] == (7 if t.state.name == "COMPLETE" else steps[-1]) and steps[-1] in (5, 6, 7)
        if t.state.name == "PRUNED":
            assert t.value == t.intermediate_values[steps[-1]]
    searcher = OptunaSearch()  # Ray's saved searcher opens the same study
    searcher.restore_from_dir(str(tmp / "ray_results" / "test_space"))
    assert [t.number for t in searcher._ot_study.trials] == [t.number for t in study.trials]


def test_a_new_search_never_joins_an_existing_study(searched, tiny_root, tmp_path):
    tmp, *_ = searched
    space = write_space(tmp_path)
    proc = subprocess.run(search_cmd(space, tiny_root, "--storage", str(tmp_path / "other_results"),
                                     "--optuna-storage", f"sqlite:///{tmp / 'optuna.db'}"),
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Optuna study named 'test_space' already exists" in proc.stderr, proc.stderr
    assert "--resume" in proc.stderr and not (tmp_path / "other_results").exists()


def test_retrain_champion(smoke_search, tmp_path):
    tmp = tmp_path  # retrain writes a run: into a copy of the search's store
    uri = smoke_search.own_store(tmp)
    proc = subprocess.run([sys.executable, "-m", "tuning.retrain", "--champion", "--seeds", "2",
                           "--epochs-scale", "0.005", "--tracking-uri", uri, "--out", str(tmp / "rt")],
                          cwd=tmp, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = client_of(tmp)
    runs = client.search_runs([client.get_experiment_by_name("test_space").experiment_id], "tags.kind = 'retrain'")
    assert len(runs) == 1
    assert runs[0].data.params["train.epochs_scale"] == "0.005" and runs[0].data.params["search_epochs_scale"] == "0.01"
    assert runs[0].data.tags["epochs_scale_from"] == "--epochs-scale"
    m = runs[0].data.metrics
    seeds = [k for k in m if k.startswith("test_top1_seed")]
    assert len(seeds) == 2 and "test_top1_mean" in m and "test_top1_std" in m
    assert m["test_top1_mean"] == pytest.approx(np.mean([m[k] for k in seeds]))
    # trained on train+val users: no validation split was held out
    metrics = json.loads(next((tmp / "rt").rglob("metrics.json")).read_text())
    assert metrics["num_val_clips"] == 0 and metrics["test_top1"] is not None


def _finished_trials(exp_dir: Path) -> set[str]:
    done = set()
    for f in exp_dir.glob("*/result.json"):
        if '"final": true' in f.read_text():
            done.add(f.parent.name)
    return done


def test_resume_after_the_driver_is_killed(tmp_path, tiny_root):
    """The driver is SIGKILLed (with its Ray) right after the second trial's MLflow run was created, i.e.
    while a trial runs, not between trials; --resume then finishes the search: finished trials are not
    run again, and MLflow holds one completed run per Ray trial, none RUNNING, any run of a trial Ray
    had not saved yet ended as interrupted."""
    space = write_space(tmp_path, num_samples=2, max_concurrent=1, scheduler={"type": "fifo"})
    spec = yaml.safe_load(space.read_text())
    spec["base"]["train.epochs_scale"] = 0.005  # 2/1/1 epochs
    space.write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen(search_cmd(space, tiny_root), cwd=tmp_path, env={**env(), "RAY_ADDRESS": "local"},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    exp_dir = tmp_path / "ray_results" / "test_space"
    deadline = time.time() + 600

    def child_runs() -> list:
        if not (tmp_path / "mlflow.db").exists():
            return []
        client = client_of(tmp_path)
        exp = client.get_experiment_by_name("test_space")
        return [] if exp is None else client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''")

    while time.time() < deadline and not (_finished_trials(exp_dir) and len(child_runs()) >= 2):
        time.sleep(0.5)
    before = _finished_trials(exp_dir)
    assert before and len(child_runs()) == 2, "the second trial did not start before the deadline"
    kill_session(proc.pid)  # the driver and the Ray it started, nothing else
    proc.wait()

    again = subprocess.run(search_cmd(space, tiny_root), cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # refuses to overwrite the old search
    resumed = subprocess.run(search_cmd(space, tiny_root, "--resume"), cwd=tmp_path, env=env(),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = sorted(p.name for p in exp_dir.iterdir() if p.is_dir() and (p / "result.json").exists())
    assert len(trials) == 2
    for t in before:  # finished trials were not run again: one result per epoch, no repeats
        rows = [json.loads(line) for line in (exp_dir / t / "result.json").read_text().splitlines()]
        epochs = [r["global_epoch"] for r in rows if not r.get("final")]
        assert epochs == list(range(1, 4))
    client = client_of(tmp_path)
    exp = client.get_experiment_by_name("test_space")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert all(r.info.status != "RUNNING" for r in children), [(r.info.run_name, r.info.status) for r in children]
    completed = [r for r in children if r.data.tags["egosearch.outcome"] == "completed"]
    interrupted = [r for r in children if r.data.tags["egosearch.outcome"] == "interrupted"]
    assert len(completed) == 2 and len({r.data.tags["ray.trial_id"] for r in completed}) == 2
    assert len(completed) + len(interrupted) == len(children) and len(interrupted) <= 1
    for r in interrupted:  # a trial Ray had not saved: its configuration ran again as the other trial
        assert r.info.status == "KILLED" and r.data.tags.get("egosearch.rerun_as")
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1
    for t in completed:  # no epoch logged twice
        got = [m.step for m in client.get_metric_history(t.info.run_id, "train_loss")]
        assert got == sorted(set(got)), got
    study = load_study(tmp_path)  # one study: each Ray trial in it once, COMPLETE; a lost ask told FAIL
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2 and all(sorted(t.intermediate_values) == [1, 2, 3, 4] for t in complete)
    assert len(study.trials) - 2 == len(interrupted) and all(
        t.state.name == "FAIL" for t in study.trials if t not in complete), study.trials
    # Optuna's states are Ray's: each Optuna trial names its Ray trial; a complete one has Ray's final score
    finals = {r["trial_id"]: r["val_top1"] for t in trials for r in map(json.loads, (
        exp_dir / t / "result.json").read_text().splitlines()) if r.get("final")}
    assert {t.user_attrs["ray_trial_id"]: t.value for t in complete} == finals
    assert sorted(t.user_attrs["ray_trial_id"] for t in study.trials if t not in complete) == sorted(
        r.data.tags["ray.trial_id"] for r in interrupted)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--space", "no_such_space"], "unknown search space"),
        (["--space", "{bad}"], "unknown search space"),
        (["--tracking-uri", "http://127.0.0.1:9"], "not reachable"),
        (["--resume"], "nothing to resume"),
        (["--num-samples", "0"], "--num-samples"),
        (["--data", "/nonexistent/GTEA61"], "does not exist"),
    ],
)
def test_bad_input_fails_before_any_trial(tmp_path, tiny_root, args, message, monkeypatch, capsys):
    """In this process (the command's ``main``, as its console script calls it): a process per case paid
    12 s of imports each; the command line itself is run below."""
    monkeypatch.chdir(tmp_path)
    try:
        code = search_main(["--data", str(tiny_root), *args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "ray_results").exists()


def test_param_not_in_egomodel_config(tmp_path, tiny_root):
    """Through the command line: a bad input exits 2 with one line naming it, no traceback."""
    space = write_space(tmp_path, params={"model.alhpa": {"type": "float", "low": 0.1, "high": 1}})
    proc = subprocess.run(search_cmd(space, tiny_root), cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "model.alhpa" in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_ray_address(tmp_path, tiny_root):
    space = write_space(tmp_path)
    proc = subprocess.run(search_cmd(space, tiny_root, "--address", "127.0.0.1:1"), cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "cannot connect to the Ray cluster" in proc.stderr, proc.stderr[-2000:]


def test_storage_is_checked_from_every_node_and_in_each_trial(tmp_path):
    """The driver's marker is read back by a task pinned to each alive node (on this one-node local Ray:
    the node reads it, then, once it is gone, the node is named with the path); a trial reads it first."""
    import ray

    from tuning.execution import storage_check
    from tuning.execution.trainable import TrialSetup, run_trial

    storage = tmp_path / "ray_results"
    session = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths are at most 107 bytes
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=session)
    try:
        name, checked = storage_check.check(str(storage), remote=True)
        assert (storage / name).is_file() and checked.endswith("readable from all 1 node alive now")
        (storage / name).unlink()  # as on a node without the mount
        with pytest.raises(storage_check.StorageError) as e:
            storage_check.check_every_node(str(storage), name)
        node_ip = ray.util.get_node_ip_address()
        assert node_ip in str(e.value) and str(storage) in str(e.value) and "s3://" in str(e.value)
    finally:
        ray.shutdown()
        shutil.rmtree(session, ignore_errors=True)
    setup = TrialSetup(space=None, data_root="", seed=0, storage=str(storage), storage_marker=name)
    with pytest.raises(storage_check.StorageError, match="cannot read the search's storage"):
        run_trial({}, setup)  # before anything else: no config is even built


def test_trials_ask_a_cluster_for_the_spaces_gpu_even_before_it_has_one(monkeypatch, capsys):
    """An autoscaling cluster starts with a CPU head only: trials must still ask for the space's GPU, or
    the autoscaler never launches a GPU worker. Only the local Ray on a machine without one runs on CPU."""
    import ray

    from tuning import search
    from tuning.space import load_space

    space = load_space("ablation")
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})  # the head of cluster.yaml
    for address in ("auto", "ray://head:10001", "10.0.0.5:6379"):
        assert search.trial_resources(space, address) == {"cpu": 4, "gpu": 0.5}
    assert "no GPU" not in capsys.readouterr().out
    assert search.trial_resources(space, None) == {"cpu": 4, "gpu": 0}
    assert "the local trials run on CPU (the space asked for gpu 0.5)" in capsys.readouterr().out
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    assert search.trial_resources(space, None) == {"cpu": 4, "gpu": 0.5}


def test_local_trials_run_at_normal_priority(monkeypatch):
    """A local search starts Ray with its workers (the trials) at nice 0, not Ray's default 15."""
    import ray

    from tuning.execution import connect

    monkeypatch.delenv(connect.WORKER_NICENESS, raising=False)
    monkeypatch.setattr(ray, "init", lambda **kw: None)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    connect.connect_ray(None)
    assert os.environ[connect.WORKER_NICENESS] == "0"
    monkeypatch.setenv(connect.WORKER_NICENESS, "5")  # a user's own setting wins
    connect.connect_ray(None)
    assert os.environ[connect.WORKER_NICENESS] == "5"


def test_retrain_reads_every_logged_param_back():
    """Params as the tracking callback logs them (str, lists as JSON) give back the same config,
    empty strings included (two_stream's checkpoint paths)."""
    from egomodel.config import flatten, from_dict
    from tuning.retrain import config_from_params

    cfg = from_dict({}, {"model.variant": "two_stream", "data.test_users": ["S2", "S3"], "model.alpha": 0.5})
    logged = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in flatten(cfg.to_dict()).items()}
    assert config_from_params(logged) == cfg
