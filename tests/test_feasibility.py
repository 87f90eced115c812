"""Trials no node can ever run (tuning.execution.feasibility): refused before the search when that is
certain, reported within seconds-to-minutes while trials wait, and never refused on an autoscaling
cluster that has no worker yet."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import client_of, env, search_cmd, write_space
from tuning.execution import feasibility as fz

HEAD = {"CPU": 8.0, "GPU": 0.0, "memory": 3e10, "node:10.0.0.1": 1.0}
TYPES = {"head_cpu": {"CPU": 8.0, "GPU": 0.0}, "gpu_worker": {"CPU": 8.0, "GPU": 1.0}}  # cluster.yaml's


def test_space_resources_become_node_resource_names() -> None:
    assert fz.ray_bundle({"cpu": 4, "gpu": 0.5}) == {"CPU": 4.0, "GPU": 0.5}
    assert fz.ray_bundle({"cpu": 1, "gpu": 0}) == {"CPU": 1.0}


def test_node_types_from_the_launchers_bootstrap_file(tmp_path: Path) -> None:
    f = tmp_path / "ray_bootstrap_config.yaml"
    assert fz.node_types(str(f)) is None  # not a launcher head
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster.yaml").read_text())
    f.write_text(yaml.safe_dump(cfg))
    assert fz.node_types(str(f)) == TYPES
    cfg["available_node_types"]["gpu_worker"].pop("resources")  # left to detection: unknown
    f.write_text(yaml.safe_dump(cfg))
    assert fz.node_types(str(f)) is None


def test_autoscaling_cluster_with_no_worker_yet_is_not_refused(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """The head of cluster.yaml alone, gpu 0.5 asked: a GPU worker type exists, so the search starts."""
    monkeypatch.setattr(fz, "alive_nodes", lambda: [HEAD])
    f = tmp_path / "boot.yaml"
    f.write_text(yaml.safe_dump({"available_node_types": {k: {"resources": v} for k, v in TYPES.items()}}))
    monkeypatch.setattr(fz, "BOOTSTRAP_CONFIG", str(f))
    fz.check_before_start({"cpu": 4, "gpu": 0.5}, local=False)
    # more GPU per trial than any node type has: refused, naming what was asked and what exists
    with pytest.raises(fz.InfeasibleError) as e:
        fz.check_before_start({"cpu": 4, "gpu": 2}, local=False)
    msg = str(e.value)
    assert "{CPU: 4, GPU: 2}" in msg and "gpu_worker {CPU: 8, GPU: 1}" in msg and "nodes alive: {CPU: 8, GPU: 0}" in msg
    # a cluster given by --address whose node types are unknown (KubeRay, another launcher): not refused
    f.unlink()
    fz.check_before_start({"cpu": 4, "gpu": 2}, local=False)


def test_diagnosis_of_waiting_trials() -> None:
    gpu2 = {"CPU": 4.0, "GPU": 2.0, "memory": 0.0}
    assert fz.diagnose({"CPU": 4.0}, [HEAD], None, False, []) is None  # fits a node alive: it only waits
    certain, msg = fz.diagnose(gpu2, [HEAD], TYPES, False, [])  # a launcher head's node types
    assert certain and "GPU: 2" in msg
    certain, msg = fz.diagnose(gpu2, [HEAD], None, False, [{"CPU": 4.0, "GPU": 2.0}])  # autoscaler v2's report
    assert certain and "reports the request infeasible" in msg
    certain, msg = fz.diagnose(gpu2, [HEAD], None, True, [])  # the local Ray the search started
    assert certain and "no autoscaler" in msg
    certain, msg = fz.diagnose(gpu2, [HEAD], None, False, [])  # unknown: an autoscaler may still launch one
    assert not certain and "ray status" in msg


def test_local_ray_refuses_and_reports_a_trial_no_node_can_run() -> None:
    """On a local Ray with one CPU: a trial asking 4 CPUs is refused before the search, and a trial that
    asks for a resource no node has, once pending, stops the search quickly with a message naming it."""
    import ray
    from ray import tune

    session = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths are at most 107 bytes
    storage = tempfile.mkdtemp(prefix="feasibility-")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=session)
    try:
        with pytest.raises(fz.InfeasibleError, match=r"asks for \{CPU: 4\}.*nodes alive: \{CPU: 1\}"):
            fz.check_before_start({"cpu": 4}, local=True)
        fz.check_before_start({"cpu": 1}, local=True)

        def trainable(config: dict) -> None:  # never runs
            tune.report({"x": 1})

        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1, "egosearch_no_such_node": 1}),
            tune_config=tune.TuneConfig(num_samples=1),
            run_config=tune.RunConfig(storage_path=storage, name="infeasible", verbose=0,
                                      callbacks=[fz.PendingWatch(local=True, after_s=1.0)]),
        )
        started = time.monotonic()
        with pytest.raises(fz.InfeasibleError) as e:
            tuner.fit()
        assert time.monotonic() - started < 30
        msg = str(e.value)
        assert "pending" in msg and "egosearch_no_such_node: 1" in msg and "no autoscaler" in msg
        assert "nodes alive: {CPU: 1}" in msg
    finally:
        ray.shutdown()
        shutil.rmtree(session, ignore_errors=True)
        shutil.rmtree(storage, ignore_errors=True)


@pytest.mark.slow  # ~50 s here (a whole search start); the default run covers the check in-process above
def test_search_refuses_a_space_no_node_of_the_local_ray_can_run(tmp_path: Path, tiny_root: Path) -> None:
    """The user's view: `python -m tuning.search` on a space asking more CPUs per trial than this machine
    has ends before any trial, with one line naming the request and the node, and no MLflow run."""
    space = write_space(tmp_path, resources={"cpu": 4096, "gpu": 0})
    proc = subprocess.run(search_cmd(space, tiny_root), cwd=tmp_path, env=env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "each trial asks for {CPU: 4096}" in proc.stderr and "nodes alive: {CPU: " in proc.stderr
    assert "Traceback" not in proc.stderr
    client = client_of(tmp_path)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()]), "no parent run"


MOUNTS = """/dev/vda / ext4 rw 0 0
tmpfs /tmp tmpfs rw 0 0
nas:/export /mnt/nfs nfs4 rw 0 0
s3fs /mnt/bucket fuse.s3fs rw 0 0
"""


def test_storage_on_one_nodes_disk_is_refused_when_nodes_join_later(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A RayJob (KubeRay) or a `ray up` head with a growing worker type, and --storage left at a folder of
    the head's own disk: refused before anything starts, naming the path, its filesystem and why nodes
    join later. A shared mount, a URI, or a cluster that adds no nodes pass."""
    from tuning.execution.storage_check import (
        StorageError,
        filesystem_type,
        refuse_local_storage_when_nodes_come_later,
    )

    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert filesystem_type("/mnt/nfs/runs", str(mounts)) == "nfs4"
    assert filesystem_type("/mnt/nfsother", str(mounts)) == "ext4"  # a prefix of a name is not a mount point
    assert filesystem_type("/tmp/x", str(mounts)) == "tmpfs"

    monkeypatch.delenv(fz.KUBERAY_ENV, raising=False)
    monkeypatch.setattr(fz, "BOOTSTRAP_CONFIG", str(tmp_path / "absent.yaml"))
    assert fz.adds_nodes_later() is None  # a fixed cluster: the check of the nodes alive now is enough
    monkeypatch.setenv(fz.KUBERAY_ENV, "egosearch")
    later = fz.adds_nodes_later()
    assert "KubeRay" in later
    with pytest.raises(StorageError) as e:
        refuse_local_storage_when_nodes_come_later("/home/ray/ray_results", later, str(mounts))
    assert "/home/ray/ray_results" in str(e.value) and "ext4" in str(e.value) and "KubeRay" in str(e.value)
    with pytest.raises(StorageError):
        refuse_local_storage_when_nodes_come_later("file:///tmp/runs", later, str(mounts))
    for shared in ("/mnt/nfs/runs", "/mnt/bucket/runs", "s3://bucket/egosearch", "gs://b/e"):
        refuse_local_storage_when_nodes_come_later(shared, later, str(mounts))
    refuse_local_storage_when_nodes_come_later("/home/ray/ray_results", None, str(mounts))

    monkeypatch.delenv(fz.KUBERAY_ENV)
    boot = tmp_path / "boot.yaml"
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster.yaml").read_text())
    boot.write_text(yaml.safe_dump(cfg))
    assert "gpu_worker" in fz.adds_nodes_later(str(boot))  # cluster.yaml's GPU workers start at 0
