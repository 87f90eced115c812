"""Shared fixtures: a tiny synthetic GTEA61-layout data set, a tiny CPU config, and an MLflow server on
loopback that a test can kill and restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from benchmarks.sessions import kill_session  # noqa: F401 - tests import it from here
from egomodel.config import Config, from_dict
from egomodel.data.synthetic import generate

TINY = {
    "model.pretrained": "none",
    "model.hidden": 32,
    "data.image_size": 64,
    "data.frames": 3,
    "data.num_workers": 0,
    "train.epochs_scale": 0.005,
    "train.eval_batch_size": 16,
}


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 3 clips x 4 users, 6 frames of 48x40 (one class missing for S1)."""
    return generate(tmp_path_factory.mktemp("gtea"), classes=4, clips_per_class=3, frames=6, size=(48, 40), seed=0)


def tiny_config(root: Path, **overrides: object) -> Config:
    values = {**TINY, "data.root": str(root), **{k.replace("__", "."): v for k, v in overrides.items()}}
    return from_dict({}, values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on a loopback port over a SQLite store: started, killed (SIGKILL), restarted."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = root, port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> MlflowServer:
        log = open(self.root / "mlflow-server.log", "a")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'store.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'mlflow-server.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.3)
        self.kill()
        raise RuntimeError("mlflow server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@pytest.fixture
def server(tmp_path):
    srv = MlflowServer(tmp_path)
    yield srv
    srv.kill()


def per_class(csv_path: Path) -> dict[str, tuple[int, int]]:
    """``per_class_*.csv`` as {class: (clips, correct)}."""
    rows = [line.split(",") for line in csv_path.read_text().split()[1:]]
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def untrained_control(trained: str | Path, out: Path) -> dict[str, tuple[int, int]]:
    """The control of a learning test: the trained run's model at its initial weights (0 epochs, same
    seed), evaluated by ``egomodel.evaluate`` on the run's test users; {class: (clips, correct)}. A
    bound that this control also meets says nothing about learning."""
    from egomodel.evaluate import main as evaluate
    from egomodel.model import build_model
    from egomodel.model import checkpoint as ck

    saved = ck.load(trained)
    cfg = from_dict(saved["config"], {})
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, len(saved["classes"]))
    path = ck.save(out / "untrained.pt", {"model": model.state_dict(), "config": saved["config"],
                                          "classes": saved["classes"], "stage": 1, "epoch": 0})
    assert evaluate(["--checkpoint", str(path), "--data", cfg.data.root, "--out", str(out / "eval"),
                     "--device", "cpu"]) == 0
    return per_class(out / "eval" / "per_class.csv")
