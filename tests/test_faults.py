"""Issue 6, faults injected into whole searches: a trial's worker SIGKILLed mid-epoch, and the data
set changed before ``--resume``; and (slow) a search with a failing trial, and one whose MLflow server
is killed. Nothing is lost, nothing is doubled, nothing runs on the wrong data."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch

from egomodel.data.dataset import load_bundle
from egomodel.model import checkpoint as ck
from egomodel.training.engine import train
from tests.conftest import client_of, env, kill_session, load_study, search_cmd, tiny_config, write_space
from tests.test_reliability import artifact_paths, children, steps
from tuning.execution.trainable import FAULT_KILL_ENV
from tuning.search import RECORD
from tuning.space import load_space
from tuning.space.sampling import trial_config
from tuning.tracking import write_retry


def _rows(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_worker_killed_mid_epoch_resumes_from_its_checkpoint(tmp_path, tiny_root):
    """One trial (3/2/2 epochs); its worker SIGKILLs itself after the first optimiser step of global
    epoch 5 (stage 2, epoch 2). Ray retries it; the retry resumes from the epoch-4 state its dead
    attempt left on the node (Ray's own checkpoint is older: one every checkpoint_interval_s); MLflow
    keeps one run with every epoch once, and the result equals an uninterrupted run of the same
    configuration."""
    space = write_space(tmp_path, num_samples=1, max_concurrent=1, scheduler={"type": "fifo"})
    proc = subprocess.run(search_cmd(space, tiny_root), cwd=tmp_path, env={**own_ray_env(), FAULT_KILL_ENV: "5"},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (trial_dir,) = [p for p in (tmp_path / "ray_results" / "test_space").iterdir() if (p / "result.json").exists()]
    errors = (trial_dir / "error.txt").read_text()
    assert "Failure # 1" in errors and "Failure # 2" not in errors  # the kill happened, once
    rows = _rows(trial_dir)
    assert [r["global_epoch"] for r in rows] == list(range(1, 8)) and rows[-1]["final"]

    client = client_of(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("test_space").experiment_id],
                              "tags.`ray.trial_id` != ''")
    assert len(runs) == 1  # the retry went on in the same MLflow run
    run = runs[0]
    rid = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["egosearch.outcome"] == "completed"
    assert run.data.tags["egosearch.retries"] == "1" and "died" in run.data.tags["egosearch.last_error"]
    for key in ("val_top1", "train_loss", "lr"):
        assert steps(client, rid, key) == list(range(1, 8)), key  # every global epoch, each once

    # the same configuration, uninterrupted, with one thread as Ray gives a 1-CPU trial
    cfg = trial_config(load_space(space), json.loads((trial_dir / "params.json").read_text()),
                       {"data.root": str(tiny_root), "train.seed": 0})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = train(cfg, tmp_path / "reference", evaluate_test=False, progress=False)
    finally:
        torch.set_num_threads(threads)
    for key in ("val_top1", "train_loss", "train_top1", "val_loss"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(rid, key))
        assert logged == [(h["global_epoch"], h[key]) for h in ref["history"]], key
    assert client.get_metric_history(rid, "best_val_top1")[0].value == ref["val_top1"]
    # Ray's retry finished the trial: Optuna was never told FAIL (issue 13, defect 6)
    (ot,) = load_study(tmp_path).trials
    assert ot.state.name == "COMPLETE" and ot.value == ref["val_top1"]
    assert ot.user_attrs["ray_trial_id"] == run.data.tags["ray.trial_id"]
    assert rows[-1]["val_top1"] == ref["val_top1"]
    weights = ck.load(client.download_artifacts(rid, "checkpoint/stage3_best.pt", str(tmp_path)))["model"]
    expected = ck.load(tmp_path / "reference" / "checkpoints" / ck.best_name(3))["model"]
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)


def test_the_data_a_search_started_on_is_read_back_and_a_change_refused(tmp_path):
    """The check ``--resume`` runs before Ray starts (the default run's test; the whole kill-and-resume is
    slow, below): the data a search started on comes from its record beside Ray's state, else from its
    MLflow parent run's tags; another fingerprint is refused naming both and the data root."""
    from tuning.search import SearchError, check_same_data, started_on
    from tuning.tracking.mlflow_runs import PARENT_TAG

    path = tmp_path / "ray_results" / "test_space"
    path.mkdir(parents=True)
    client = client_of(tmp_path)
    assert started_on(str(path), client, "test_space") is None  # nothing recorded: nothing to compare
    exp = client.create_experiment("test_space")
    client.create_run(exp, tags={PARENT_TAG: str(path), "data_fingerprint": "aaa", "data_root": "/data/old"})
    from_tags = started_on(str(path), client, "test_space")
    (path / RECORD).write_text(json.dumps({"data_fingerprint": "bbb", "data_root": "/data/rec"}))
    from_record = started_on(str(path), client, "test_space")
    assert (from_tags["data_fingerprint"], from_record["data_fingerprint"]) == ("aaa", "bbb")
    check_same_data(str(path), from_record, "/data/now", "bbb")  # the same data: resumes
    with pytest.raises(SearchError) as e:
        check_same_data(str(path), from_tags, "/data/now", "ccc")
    msg = str(e.value)
    assert msg.startswith("--resume refused: the data set changed")
    assert "fingerprint aaa" in msg and "fingerprint ccc" in msg and "/data/old" in msg and "/data/now" in msg


@pytest.mark.slow
def test_resume_refused_when_the_data_changed(tmp_path, tiny_root):
    """A search is killed while its first trial trains; a clip is added to the data; ``--resume`` is
    refused before Ray starts, naming both fingerprints and the data root, and nothing runs."""
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    space = write_space(tmp_path, num_samples=2, max_concurrent=1, scheduler={"type": "fifo"})
    proc = subprocess.Popen(search_cmd(space, root), cwd=tmp_path, env=own_ray_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    exp_dir = tmp_path / "ray_results" / "test_space"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not any(trial_epochs(exp_dir).values()):
        time.sleep(0.5)
    kill_session(proc.pid)  # the driver and the Ray it started
    proc.wait()
    before = trial_epochs(exp_dir)
    assert any(before.values()) and (exp_dir / RECORD).exists()  # killed mid-search: there is something to resume
    client = client_of(tmp_path)
    (parent,) = client.search_runs([client.get_experiment_by_name("test_space").experiment_id],
                                   "tags.`egosearch.ray_path` != ''")
    old = parent.data.tags["data_fingerprint"]

    clips = root / "processed_frames2" / "S3" / "stir_cup"
    shutil.copytree(clips / "3", clips / "4")  # one clip more
    new = load_bundle(tiny_config(root).data, 0, need_mmaps=True).fingerprint
    assert new != old
    for record in (True, False):  # the search's own record; a search started before records: its MLflow tags
        if not record:
            (exp_dir / RECORD).unlink()
        resumed = subprocess.run(search_cmd(space, root, "--resume"), cwd=tmp_path, env=own_ray_env(),
                                 capture_output=True, text=True, timeout=300)
        err = resumed.stderr
        assert resumed.returncode == 2 and "--resume refused: the data set changed" in err, err[-3000:]
        assert f"fingerprint {old}" in err and f"fingerprint {new}" in err and str(root) in err
        assert "Traceback" not in err and "Started a local Ray instance" not in resumed.stdout + err
        assert trial_epochs(exp_dir) == before  # no trial ran


# --------------------------------------------------------------------------- whole searches (slow)
def own_ray_env() -> dict[str, str]:
    """With no --address, ``ray.init()`` joins a cluster that ``ray start`` left on this machine (found
    through /tmp/ray/ray_current_cluster); RAY_ADDRESS=local makes each search start its own."""
    return {**env(), "RAY_ADDRESS": "local"}


def _space_with_a_nan_trial(tmp: Path) -> Path:
    """Two trials: stage 1 at lr 1e37 (Adam's first step overflows the weights: the loss is NaN
    at the next batch) and a normal one."""
    return write_space(tmp, num_samples=2, max_concurrent=2, scheduler={"type": "fifo"},
                       params={"train.stage1.lr": {"type": "categorical", "choices": [1.0e37, 1.0e-3]}},
                       points=[{"train.stage1.lr": 1.0e37}, {"train.stage1.lr": 1.0e-3}])


@pytest.mark.slow
def test_search_with_a_failing_trial(tmp_path, tiny_root):
    """A trial whose loss goes non-finite: failed in Ray and MLflow with the reason, the search goes on,
    the completed trial has its plots, the parent run has Optuna's plots and trials.csv."""
    space = _space_with_a_nan_trial(tmp_path)
    proc = subprocess.run(search_cmd(space, tiny_root), cwd=tmp_path, env=own_ray_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp_dir = tmp_path / "ray_results" / "test_space"
    from ray.tune import ExperimentAnalysis

    errors = {Path(t.path).name: t for t in ExperimentAnalysis(str(exp_dir)).trials if t.status == "ERROR"}
    assert len(errors) == 1
    ray_error = (exp_dir / next(iter(errors)) / "error.txt").read_text()
    assert "FloatingPointError: training loss is" in ray_error

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("test_space")
    parent = next(r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags)
    runs = list(children(client, parent.info.run_id).values())
    failed = [r for r in runs if r.data.tags["egosearch.outcome"] == "failed"]
    done = [r for r in runs if r.data.tags["egosearch.outcome"] == "completed"]
    assert len(failed) == 1 and len(done) == 1
    f = failed[0]
    assert f.info.status == "FAILED" and f.data.params["train.stage1.lr"] == "1e+37"
    assert f.data.tags["error"].startswith("FloatingPointError: training loss is nan")
    assert "error.txt" in artifact_paths(client, f.info.run_id)
    arts = artifact_paths(client, done[0].info.run_id)
    assert {"confusion_val.png", "per_class_val.csv", "plots/training_curves.png", "plots/cam_val.png",
            "plots/feedback_val.png"} <= arts
    assert parent.data.tags["best_run_id"] == done[0].info.run_id

    search_arts = artifact_paths(client, parent.info.run_id, "search")
    assert {"search/optuna_history.png", "search/optuna_parallel_coordinate.png", "search/trials.csv",
            "search/notes.txt"} <= search_arts
    assert "search/optuna_importances.png" not in search_arts  # one complete trial: skipped with a note
    notes = client.download_artifacts(parent.info.run_id, "search/notes.txt", str(tmp_path))
    assert "importances" in Path(notes).read_text()
    import csv

    rows = list(csv.DictReader(open(client.download_artifacts(parent.info.run_id, "search/trials.csv",
                                                              str(tmp_path)))))
    assert sorted(r["outcome"] for r in rows) == ["completed", "failed"]
    assert sorted(r["optuna_state"] for r in rows) == ["COMPLETE", "FAIL"]
    assert {r["run_id"] for r in rows} == {r.info.run_id for r in runs}
    assert next(r for r in rows if r["outcome"] == "failed")["error"].startswith("FloatingPointError")


def trial_epochs(exp_dir: Path) -> dict[str, list[int]]:
    out = {}
    for f in exp_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = sorted(r["global_epoch"] for r in rows)  # the last comes with "final"
    return out


@pytest.mark.slow
def test_search_survives_the_mlflow_server_going_away(tmp_path, tiny_root, server):
    """The tracking server is SIGKILLed after the first epoch and stays down to the end: the search
    finishes its trials, stops with exit code 2 and a message; with the server back, ``--resume``
    delivers every buffered write and registers the champion. Nothing is lost, nothing is doubled."""
    space = write_space(tmp_path, num_samples=2, max_concurrent=2, scheduler={"type": "fifo"})
    server.start()
    cmd = search_cmd(space, tiny_root, "--tracking-uri", server.uri)
    run_env = {**own_ray_env(), write_retry.FLUSH_TIMEOUT_ENV: "5"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    exp_dir = tmp_path / "ray_results" / "test_space"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if exp_dir.exists() and any(trial_epochs(exp_dir).values()):
            break  # the first epoch is in MLflow already
        time.sleep(0.5)
    server.kill()
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 2, out[-3000:] + err[-3000:]
    assert "unreachable" in err and "--resume" in err and "Traceback" not in err.split("error:")[-1]

    server.start()
    resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=run_env, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    client = mlflow.MlflowClient(server.uri)
    exp = client.get_experiment_by_name("test_space")
    parents = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags.get("champion")
    runs = children(client, parents[0].info.run_id)
    ray_epochs = trial_epochs(exp_dir)
    assert sorted(runs) == sorted(ray_epochs) and len(runs) == 2
    for tid, epochs in ray_epochs.items():
        r = runs[tid]
        assert steps(client, r.info.run_id) == epochs, tid  # every epoch Ray saw, each exactly once
        assert r.info.status == "FINISHED" and r.data.tags["egosearch.outcome"] == "completed"
        assert {"checkpoint/stage3_best.pt", "plots/training_curves.png"} <= artifact_paths(client, r.info.run_id)
    assert "search/trials.csv" in artifact_paths(client, parents[0].info.run_id, "search")
