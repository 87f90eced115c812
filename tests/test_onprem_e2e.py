"""`ray up cluster-onprem.yaml` for real, against this machine over SSH on loopback (the head of
tests/onprem_cluster.py, in its own network, PID and mount namespaces; needs root), then the smoke search
through `ray job submit`, then `ray down`."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from tests import onprem_cluster
from tests.conftest import TEST_BACKBONE
from tests.onprem_cluster import BIN, HEAD_ADDRESS, Head, checkout, local_cluster_file, tail
from tuning.space import SPACES_DIR

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
key, head_raytmp, head = onprem_cluster.key, onprem_cluster.head_raytmp, onprem_cluster.head  # the fixtures

DASHBOARD = "http://127.0.0.1:8265"  # what `ray dashboard` forwards to, per docs/cluster.md
EXPERIMENT = "onprem_e2e"
NUM_TRIALS = 2


def test_ray_up_job_submit_and_ray_down_on_this_machine(tmp_path: Path, key: Path, head: Head, tiny_root: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    home = head.home
    cfg = local_cluster_file(tmp_path, key)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_TMPDIR": str(tmp_path / "launcher-raytmp")}  # the launcher's state file, apart from other Rays
    env.pop("RAY_ADDRESS", None)
    ray = str(BIN / "ray")
    repo = checkout(tmp_path / "egosearch")  # the user's clone: `ray up` and `ray job submit` run from it
    timings: dict[str, float] = {}

    space = yaml.safe_load((SPACES_DIR / "smoke.yaml").read_text())
    # 2/1/1 epochs: too short for ASHA's stage-aware rungs, and this test is about the cluster, not the scheduler
    space.update(name=EXPERIMENT, num_samples=NUM_TRIALS, max_concurrent=2, scheduler={"type": "fifo"})
    space["base"].update({"train.epochs_scale": 0.005, "train.eval_batch_size": 32, **TEST_BACKBONE})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = tmp_path / "ray_results"

    try:
        t0 = time.time()
        up = head.run([ray, "up", "-y", "--no-config-cache", str(cfg)], "ray_up.log", 900, env, cwd=repo)
        timings["ray up"] = time.time() - t0
        assert up.returncode == 0, tail(up)

        # the head's setup ran as the file says: repository synced, venv wired into ~/.bashrc, MLflow
        # on the head's private address (not loopback) and answering
        assert (home / "egosearch" / "cluster-onprem.yaml").exists(), "file_mounts did not sync the repository"
        assert not (home / "egosearch" / ".git").exists() and not (home / "egosearch" / ".venv").exists()
        assert "egosearch-venv/bin/activate" in (home / ".bashrc").read_text()
        tracking_uri = (home / "mlflow" / "tracking_uri").read_text().strip()
        assert tracking_uri == f"http://{HEAD_ADDRESS}:5000"
        health = head.run([sys.executable, "-c", "import sys, urllib.request; urllib.request.urlopen(sys.argv[1])",
                           f"{tracking_uri}/health"], "mlflow_health.log", 30)
        assert health.returncode == 0, tail(health)
        status = head.run([ray, "exec", str(cfg), "ray status"], "ray_status.log", 300, env)
        assert status.returncode == 0 and "Active:" in status.stdout, tail(status)

        job_id = f"egosearch-e2e-{int(time.time())}"
        t0 = time.time()
        submit = head.run([ray, "job", "submit", "--address", DASHBOARD, "--submission-id", job_id,
                           "--working-dir", ".", "--",
                           "python", "-m", "tuning.search", "--space", str(tmp_path / "space.yaml"),
                           "--data", str(tiny_root), "--address", "auto", "--storage", str(storage),
                           "--tracking-uri", tracking_uri], "ray_job_submit.log", 1200, env, cwd=repo)
        timings["ray job submit"] = time.time() - t0
        job = head.run([sys.executable, "-c", "import sys; from ray.job_submission import JobSubmissionClient as C; "
                        "print('STATUS=' + C(sys.argv[1]).get_job_status(sys.argv[2]).value)", DASHBOARD, job_id],
                       "ray_job_status.log", 120, env)
        assert "STATUS=SUCCEEDED" in job.stdout, f"{tail(job)}\n--- submit ---\n{tail(submit)}"
        assert submit.returncode == 0, tail(submit)

        # the search ran on this cluster: its Tune storage, and its runs in the head's MLflow store
        results = list((storage / EXPERIMENT).glob("*/result.json"))
        assert len(results) == NUM_TRIALS
        for result in results:  # trials ran on the head node the launcher started
            assert {json.loads(line)["node_ip"] for line in result.read_text().splitlines()} == {HEAD_ADDRESS}
        client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
        exp = client.get_experiment_by_name(EXPERIMENT)
        assert exp is not None, f"no experiment {EXPERIMENT} in the head's MLflow store"
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        assert len(children) == NUM_TRIALS
        assert {r.data.tags.get("egosearch.outcome") for r in children} <= {"completed", "early_stopped"}
        champion = client.get_model_version_by_alias(f"egosearch-{EXPERIMENT}", "champion")
        assert champion.run_id == parents[0].data.tags["best_run_id"]

        t0 = time.time()
        down = head.run([ray, "down", "-y", str(cfg)], "ray_down.log", 600, env)
        timings["ray down"] = time.time() - t0
        assert down.returncode == 0, tail(down)
        # docs/cluster.md: `ray down` stops Ray on the machines (they stay on)
        ps = head.ssh("ps -e -o comm=", "processes_after_ray_down.log")
        assert ps.returncode == 0 and "sshd" in ps.stdout, tail(ps)
        left = {"raylet", "gcs_server"} & set(ps.stdout.split())
        assert not left, f"Ray still running on the head after `ray down`: {left}"
        shutil.rmtree(storage)  # checkpoints and the stage store: GBs, even for this search
        shutil.rmtree(home / "mlflow" / "artifacts")
    finally:
        # stop whatever is left on the head (Ray if `ray down` did not, the MLflow server, which the file
        # starts and nothing stops); the head fixture then ends anything else in its namespaces
        head.ssh(f"RAY_TMPDIR={head.raytmp} {BIN / 'ray'} stop --force; kill -- -$(cat ~/mlflow/server.pid); true",
                 "ray_stop.log")
        with capsys.disabled():
            print(f"\n[test_onprem_e2e] {', '.join(f'{k}: {v:.0f} s' for k, v in timings.items())}; "
                  f"logs in {head.logs}")
