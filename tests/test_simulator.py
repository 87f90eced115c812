"""The search on Ray's autoscaling simulator (the ``fake_multinode`` node provider of Ray's own
autoscaler tests): node types with ``min_workers: 0`` and fake ``GPU`` resources, launched on demand as
separate raylets on this machine.

Each test runs one bash script as PID 1 of its own PID namespace (``unshare --pid --fork --mount-proc``,
root only): the cluster's ``ray stop`` sees only the namespace's processes, and whatever survives it is
killed by the kernel when the script ends (``--kill-child`` ends the script if the test times out). Ray
is started with its own short ``--temp-dir`` (socket paths must fit 107 bytes) and its own ports, and both
are removed afterwards. Ray's ``AutoscalingCluster`` helper is not used: the installed wheel lacks the
example config it reads, and it runs ``ray stop --force``, which would end every Ray on the machine.

Slow (minutes on 2 cores): the default run covers the same two defects faster, with the trial-resource
decision in ``test_search.py::test_trials_ask_a_cluster_for_the_spaces_gpu_even_before_it_has_one`` and
the storage check on a local Ray in ``test_search.py::test_storage_is_checked_from_every_node_and_in_each_trial``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, write_space
from tuning.execution import gpu_check

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                       reason="needs root and unshare for its own PID and mount namespaces"),
]

PY = sys.executable
RAY = str(Path(sys.executable).parent / "ray")
REPO = Path(__file__).resolve().parents[1]
UNREADY_NODE = "5e" * 28  # the Ray node id given to the node without the storage


def autoscaler_config(port: int) -> dict:
    """A CPU-only head and a GPU worker type that starts at zero, as in cluster.yaml (smaller)."""
    return {
        "cluster_name": "egosearch-sim", "max_workers": 2, "idle_timeout_minutes": 1, "upscaling_speed": 1.0,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0,
                           "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def cluster_ports() -> dict[str, int]:
    """The head's ports, free now (other Rays on this machine use the defaults)."""
    return {k: free_port() for k in ("PORT", "CLIENT_PORT", "DASH_PORT", "AGENT_PORT", "NODE_AGENT_PORT")}


def run_in_namespace(script: str, cwd: Path, timeout: int, ports: dict[str, int]) -> subprocess.CompletedProcess:
    """``script`` (bash) as PID 1 of a new PID namespace, with Ray's session in a fresh short folder;
    the folder is removed afterwards. ``$HEAD`` in it starts the head."""
    session = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
    environ = {
        **os.environ, **{k: str(v) for k, v in ports.items()}, "RAY_TMP": session, "PY": PY, "RAY": RAY,
        "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
        gpu_check.ALLOW_FAKE_GPU_ENV: "1",  # torch sees no CUDA behind the simulator's fake GPUs
        "RAY_DEDUP_LOGS": "0", "TQDM_DISABLE": "1",
    }
    head = ('"$RAY" start --head --port="$PORT" --node-ip-address=127.0.0.1 --num-cpus=1 --num-gpus=0 '
            '--include-dashboard=false --dashboard-port="$DASH_PORT" --ray-client-server-port="$CLIENT_PORT" '
            '--dashboard-agent-listen-port="$AGENT_PORT" --temp-dir="$RAY_TMP" --disable-usage-stats')
    path = cwd / "cluster.sh"
    path.write_text("set -u\ntrap '\"$RAY\" stop >/dev/null 2>&1' EXIT\n" + script.replace("$HEAD", head))
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "bash", str(path)],
                              cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(session, ignore_errors=True)


def trial_rows(results: Path) -> dict[str, list[dict]]:
    """Every report of every trial, from Ray's result.json files in the storage."""
    rows: dict[str, list[dict]] = {}
    for f in results.glob("*/result.json"):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows.setdefault(r["trial_id"], []).append(r)
    return rows


def test_gpu_trials_scale_workers_from_zero_and_pack_two_per_worker(tmp_path, tiny_root):
    """The smoke search with ``gpu: 0.5`` trials on a cluster whose only node is a CPU head: the trials'
    demand makes the autoscaler launch GPU workers, every trial runs on a worker, two at once on one."""
    ports = cluster_ports()
    (tmp_path / "autoscaler.yaml").write_text(yaml.safe_dump(autoscaler_config(ports["PORT"])))
    # FIFO: both trials run to the end (the early stopper would stop one of two), so their spans can overlap
    space = write_space(tmp_path, num_samples=2, max_concurrent=2, resources={"cpu": 1, "gpu": 0.5},
                        scheduler={"type": "fifo"})
    script = f"""
RAY_FAKE_CLUSTER=1 $HEAD --autoscaling-config=autoscaler.yaml > head.log 2>&1 || exit 90
"$PY" -m tuning.search --space {space} --data {tiny_root} --address "127.0.0.1:$PORT" \\
    --storage {tmp_path}/ray_results > search.out 2> search.err
echo $? > search.rc
"$PY" -c "import json, ray; ray.init(address='127.0.0.1:$PORT', log_to_driver=False); \\
json.dump(ray.nodes(), open('nodes.json', 'w'))" > nodes.log 2>&1
"""
    proc = run_in_namespace(script, tmp_path, timeout=1200, ports=ports)
    logs = "".join((tmp_path / n).read_text()[-3000:] for n in ("head.log", "search.out", "search.err")
                   if (tmp_path / n).exists())
    assert proc.returncode == 0 and (tmp_path / "search.rc").read_text().strip() == "0", logs + proc.stderr[-2000:]
    out = (tmp_path / "search.out").read_text()
    assert "readable from all 1 node alive now" in out  # only the head was up: the workers came later
    nodes = json.loads((tmp_path / "nodes.json").read_text())
    head = {n["NodeID"] for n in nodes if "node:__internal_head__" in n["Resources"]}
    workers = {n["NodeID"] for n in nodes if n["Resources"].get("GPU", 0) == 1}
    assert len(head) == 1 and workers and not head & workers, nodes
    rows = trial_rows(tmp_path / "ray_results" / "test_space")
    assert len(rows) == 2 and all(r[-1].get("final") for r in rows.values()), rows.keys()
    ran_on = {t: {r["node_id"] for r in rs} for t, rs in rows.items()}
    assert all(len(n) == 1 and n <= workers for n in ran_on.values()), (ran_on, workers)  # never on the head
    spans = {t: (min(r["timestamp"] - r["time_total_s"] for r in rs), max(r["timestamp"] for r in rs))
             for t, rs in rows.items()}
    print(f"GPU workers launched: {len(workers)}; trial -> node: {ran_on}; trial spans (s): {spans}")
    (a, na), (b, nb) = [(t, next(iter(n))) for t, n in ran_on.items()]
    assert na == nb and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1], (ran_on, spans)


def test_storage_one_node_cannot_read_is_refused_before_any_trial(tmp_path, tiny_root):
    """A second node joins with a tmpfs over the storage folder (its own mount namespace): the search
    names that node and the path, and no trial starts."""
    storage = tmp_path / "shared"
    storage.mkdir()
    space = write_space(tmp_path)
    script = f"""
$HEAD > head.log 2>&1 || exit 90
RAY_OVERRIDE_NODE_ID_FOR_TESTING={UNREADY_NODE} unshare --mount --propagation private sh -c \\
    'mount -t tmpfs tmpfs "$0" && exec "$RAY" start --address="127.0.0.1:$PORT" --num-cpus=1 \\
     --node-ip-address=127.0.0.1 --dashboard-agent-listen-port="$NODE_AGENT_PORT" \\
     --disable-usage-stats' {storage} > node.log 2>&1 || exit 91
"$PY" -m tuning.search --space {space} --data {tiny_root} --address "127.0.0.1:$PORT" \\
    --storage {storage} > search.out 2> search.err
echo $? > search.rc
"""
    proc = run_in_namespace(script, tmp_path, timeout=600, ports=cluster_ports())
    logs = "".join((tmp_path / n).read_text()[-3000:] for n in ("head.log", "node.log", "search.out", "search.err")
                   if (tmp_path / n).exists())
    assert proc.returncode == 0 and (tmp_path / "search.rc").exists(), logs + proc.stderr[-2000:]
    err = (tmp_path / "search.err").read_text()
    assert (tmp_path / "search.rc").read_text().strip() != "0", logs
    assert f"Ray node {UNREADY_NODE}" in err and f"cannot read the search's storage {storage}" in err, logs
    assert err.count("cannot read") == 1  # the head reads it: only the other node is named
    assert not list(storage.glob("test_space/*/result.json")) and "Trial" not in (tmp_path / "search.out").read_text()
