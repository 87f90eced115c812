"""Ray's autoscaling simulator for the slow tests (the ``fake_multinode`` node provider of Ray's own
autoscaler tests): node types with ``min_workers: 0`` and fake ``GPU`` resources, launched on demand as
separate raylets on this machine.

A test runs one bash script as PID 1 of its own PID namespace (``unshare --pid --fork --mount-proc``,
root only): the cluster's ``ray stop`` sees only the namespace's processes, and whatever survives it is
killed by the kernel when the script ends (``--kill-child`` ends the script if the test times out). Ray
is started with its own short ``--temp-dir`` (socket paths must fit 107 bytes) and its own ports, and both
are removed afterwards. Ray's ``AutoscalingCluster`` helper is not used: the installed wheel lacks the
example config it reads, and it runs ``ray stop --force``, which would end every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tuning.execution import gpu_check

PY = sys.executable
RAY = str(Path(sys.executable).parent / "ray")
REPO = Path(__file__).resolve().parents[1]

needs_namespaces = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                      reason="needs root and unshare for its own PID and mount namespaces")


def autoscaler_config(port: int, max_workers: int = 2) -> dict:
    """A CPU-only head and a GPU worker type that starts at zero, as in cluster.yaml (smaller)."""
    return {
        "cluster_name": "egosearch-sim", "max_workers": max_workers, "idle_timeout_minutes": 1,
        "upscaling_speed": 1.0,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0,
                           "max_workers": max_workers},
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


def logs_of(folder: Path, *names: str, tail: int = 3000) -> str:
    """The ends of the script's log files, for an assertion's message."""
    return "".join(f"--- {n}\n{(folder / n).read_text()[-tail:]}" for n in names if (folder / n).exists())


def node_processes(node_id: str) -> list[int]:
    """The processes of one fake node: its raylet and everything the raylet started (workers, agents),
    which inherit the node id the simulator gives that raylet in its environment."""
    mark = f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode()
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if mark in (p / "environ").read_bytes().split(b"\0"):
                    pids.append(int(p.name))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return pids


def kill_node_when(results: Path, stage: int, epoch: int, out: Path, timeout: float = 1500) -> None:
    """Wait until a trial in ``results`` has reported epoch ``epoch`` of stage ``stage`` (computed, not
    taken from the store), then SIGKILL every process of the node it runs on: the node is lost mid-trial.
    Writes what it killed to ``out`` (JSON). Run inside the cluster's PID namespace."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for trial, rows in trial_rows(results).items():
            hit = [r for r in rows if r.get("stage") == stage and r.get("stage_epoch") == epoch
                   and not r.get("from_store")]
            if hit:
                node = hit[-1]["node_id"]
                pids = node_processes(node)
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                out.write_text(json.dumps({"trial": trial, "node_id": node, "pids": pids, "at": time.time(),
                                           "global_epoch": hit[-1]["global_epoch"]}))
                return
        time.sleep(0.2)
    raise TimeoutError(f"no trial reported stage {stage} epoch {epoch} in {timeout:.0f} s")


if __name__ == "__main__":  # python -m tests.fake_cluster RESULTS STAGE EPOCH OUT
    kill_node_when(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
