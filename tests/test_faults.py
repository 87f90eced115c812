"""Issue 6, faults injected into whole searches: a trial's worker SIGKILLed mid-epoch, and the data
set changed before ``--resume``. Nothing is lost, nothing is doubled, nothing runs on the wrong data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import torch

from egomodel.data.dataset import load_bundle
from egomodel.model import checkpoint as ck
from egomodel.training.engine import train
from tests.conftest import tiny_config
from tests.test_reliability import own_ray_env, steps, trial_epochs
from tests.test_search import client_of, search_cmd, write_space
from tuning.execution.trainable import FAULT_KILL_ENV
from tuning.search import RECORD
from tuning.space import load_space
from tuning.space.sampling import trial_config


def _rows(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


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
    assert rows[-1]["val_top1"] == ref["val_top1"]
    weights = ck.load(client.download_artifacts(rid, "checkpoint/stage3_best.pt", str(tmp_path)))["model"]
    expected = ck.load(tmp_path / "reference" / "checkpoints" / ck.best_name(3))["model"]
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)


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
    os.killpg(proc.pid, signal.SIGKILL)
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
