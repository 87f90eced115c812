"""``python -m tuning.prepare``: the clips as Ray tasks write the same files as ``egomodel.prepare``, on a
local Ray (default run) and on a two-node local cluster (slow). The tests end only the Ray they started
(their process sessions) and remove its temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from egomodel.data.synthetic_ego import generate_ego
from egomodel.prepare import main as prepare
from tests.conftest import free_port, kill_session

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")


def _start(args: list[str], env: dict[str, str]) -> int:
    """``ray start ...`` in a session of its own (its daemons keep it); the session id."""
    proc = subprocess.Popen([RAY, "start", *args], env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=180)
    if proc.returncode != 0:
        kill_session(proc.pid)
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{out[-2000:]}")
    return proc.pid


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _inputs(tmp_path: Path) -> tuple[list[str], Path, Path, dict[str, str]]:
    """Ego-motion videos (8 clips) prepared by egomodel.prepare; the arguments, a short Ray temp folder
    (/tmp/rpXXXX: Ray's socket paths must stay short) and the environment for Ray."""
    raw = generate_ego(tmp_path / "raw", classes=2, clips_per_class=2, frames=5, size=(64, 48), users=2)
    args = ["videos", str(raw / "manifest.csv"), "--flow", "dis", "--no-progress"]
    assert prepare([*args, "--out", str(tmp_path / "local")]) == 0
    temp = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": "0", "RAY_TMPDIR": str(temp)}
    env.pop("RAY_ADDRESS", None)
    return args, tmp_path / "local", temp, env


def test_tuning_prepare_on_a_local_ray_writes_what_egomodel_prepare_writes(tmp_path: Path) -> None:
    args, local, temp, env = _inputs(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "tuning.prepare", *args, "--out", str(tmp_path / "ray")], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        kill_session(proc.pid)  # the local Ray the driver started, should it have left anything
        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert "8 clips, 1 Ray node(s)" in out and "8 clips (8 written now" in out
    assert _files(tmp_path / "ray") == _files(local)


@pytest.mark.slow
def test_tuning_prepare_on_two_nodes_writes_what_egomodel_prepare_writes(tmp_path: Path) -> None:
    from ray.util import get_node_ip_address

    args, local, temp, env = _inputs(tmp_path)
    address = f"{get_node_ip_address()}:{free_port()}"
    sessions = []
    try:
        sessions.append(_start(["--head", "--num-cpus", "1", "--port", address.rsplit(":", 1)[1],
                                "--include-dashboard", "false", "--temp-dir", str(temp)], env))
        sessions.append(_start(["--address", address, "--num-cpus", "1"], env))
        run = subprocess.run([sys.executable, "-m", "tuning.prepare", *args, "--out", str(tmp_path / "cluster"),
                              "--address", address], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        for sid in sessions:
            kill_session(sid)
        shutil.rmtree(temp, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "8 clips, 2 Ray node(s) with 2 CPUs" in run.stdout
    assert _files(tmp_path / "cluster") == _files(local)
