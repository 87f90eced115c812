"""Shared fixtures: a tiny synthetic GTEA61-layout data set, a tiny CPU config, one smoke search that
every test reading a finished search shares, and an MLflow server on loopback that a test can kill and
restart."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on the machine's cores: OpenMP threads that sleep when idle, rather than spin against the
    # other worker's, and one thread per worker (set before torch loads its OpenMP runtime). Two threads in
    # each of two workers on 2 cores ran the two learning tests in 193 s, one thread each in 165 s
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
import yaml

from benchmarks.sessions import kill_session  # noqa: F401 - tests import it from here
from egomodel.config import Config, from_dict
from egomodel.data.synthetic import generate
from tuning.space import SPACES_DIR

REPO = Path(__file__).resolve().parents[1]

# Tests of the platform (not of learning) run the half-size backbone: the same code paths, half the
# compute and half the bytes per checkpoint. The learning tests set the paper's ResNet-34 themselves.
TEST_BACKBONE = {"model.backbone": "resnet18"}
TINY = {
    **TEST_BACKBONE,
    "model.pretrained": "none",
    "model.hidden": 32,
    "data.image_size": 64,
    "data.frames": 3,
    "data.num_workers": 0,
    "train.epochs_scale": 0.005,
    "train.eval_batch_size": 16,
}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups off the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``-n 2 --dist loadgroup``) each worker builds its own session- and module-scoped
    fixtures. So every test that reads the shared smoke search runs on one worker (the session's one
    search is not run once per worker), and a module's tests that share one of its module-scoped fixtures
    (a trained reference run, a registered champion, a local Ray) run together on one worker too."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        if "smoke_search" in names:
            _group(config, item, "smoke_search")
        elif any(d and d[-1].scope == "module" for n, d in defs.items() if n in names):
            _group(config, item, item.module.__name__)


def _group(config: pytest.Config, item: pytest.Item, group: str) -> None:
    """``xdist_group(group)``, and the ``@group`` suffix of the test's id that loadgroup schedules by: xdist
    3.8 writes it to ``item._nodeid``, which pytest 9.2 no longer reads (it keeps the id in ``item._id``), so
    without this every test was scheduled alone and the shared search ran on both workers."""
    item.add_marker(pytest.mark.xdist_group(group))
    if getattr(config.option, "loadgroup", False) and hasattr(item, "_id") and "@" not in item.nodeid:
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(f"{item.nodeid}@{group}")


@pytest.fixture(scope="session", autouse=True)
def ray_temp_dir() -> Any:
    """Every Ray the tests start (in this process or in a search they run) keeps its session folder under a
    folder of this test session's own (``RAY_TMPDIR``), removed at the end: Ray leaves each session's logs
    and spilled objects behind in ``/tmp/ray``, and a day of test runs had left 4.7 GB there. The folder is
    directly under /tmp, since Ray's socket paths inside it must stay within 107 bytes."""
    folder = tempfile.mkdtemp(prefix="egoray-", dir="/tmp")
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = folder
    try:
        yield Path(folder)
    finally:
        if before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = before
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 3 clips x 4 users, 6 frames of 48x40 (one class missing for S1)."""
    return generate(tmp_path_factory.mktemp("gtea"), classes=4, clips_per_class=3, frames=6, size=(48, 40), seed=0)


def tiny_config(root: Path, **overrides: object) -> Config:
    values = {**TINY, "data.root": str(root), **{k.replace("__", "."): v for k, v in overrides.items()}}
    return from_dict({}, values)


def write_space(tmp: Path, **changes: object) -> Path:
    """``smoke.yaml`` as ``test_space``, with ``changes`` applied to its top-level keys."""
    space = yaml.safe_load((SPACES_DIR / "smoke.yaml").read_text())
    space["base"]["train.eval_batch_size"] = 32
    space["base"].update(TEST_BACKBONE)
    space["name"] = "test_space"
    space.update(changes)
    path = tmp / "test_space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def search_cmd(space: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tuning.search", "--space", str(space), "--data", str(root), *extra]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0", "TQDM_DISABLE": "1"}


def client_of(tmp: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")


def load_study(tmp: Path, name: str = "test_space") -> Any:
    """The search's Optuna study, as a user opens it (``optuna.db`` in the search's working folder)."""
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp / 'optuna.db'}")


class SmokeSearch:
    """A finished three-trial smoke search (``test_space``, 2 at a time, ASHA) in ``folder``: Ray's
    results in ``folder/ray_results``, MLflow in ``folder/mlflow.db`` with artifacts under
    ``folder/mlartifacts``, the Optuna study in ``folder/optuna.db``, the driver's output in ``stdout``, and
    the trial counts a reader of the study saw while the search ran. It was started from ``started_in``,
    another folder, with every store named by a flag. Tests read it; a test that writes to MLflow (a
    retrain, a UI server) takes its own copy of the store with :meth:`own_store`."""

    def __init__(self, folder: Path, stdout: str, study_trials_seen: list[int], started_in: Path) -> None:
        self.folder, self.stdout, self.study_trials_seen = folder, stdout, study_trials_seen
        self.started_in = started_in
        self.exp_dir = folder / "ray_results" / "test_space"

    def own_store(self, dest: Path) -> str:
        """A private copy of the search's MLflow store in ``dest`` (artifacts stay shared); its URI."""
        shutil.copy2(self.folder / "mlflow.db", dest / "mlflow.db")
        return f"sqlite:///{dest / 'mlflow.db'}"


@pytest.fixture(scope="session")
def smoke_search(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path):
    """One search for the whole session: the MLflow records, the champion, the Optuna study, retrain,
    the UI and the benchmark figures are all read from it (each search costs a minute here). While it
    runs, its study is read from optuna.db as a user would."""
    tmp = tmp_path_factory.mktemp("search")
    start = tmp_path_factory.mktemp("started_in")  # the search must write nothing here
    space = write_space(tmp, num_samples=3, max_concurrent=2)
    stores = ("--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--storage", str(tmp / "ray_results"),
              "--optuna-storage", f"sqlite:///{tmp / 'optuna.db'}")
    with (tmp / "out.txt").open("w+") as out, (tmp / "err.txt").open("w+") as err:
        proc = subprocess.Popen(search_cmd(space, tiny_root, *stores), cwd=start, env=env(), stdout=out, stderr=err)
        seen = []
        deadline = time.time() + 900
        while proc.poll() is None and time.time() < deadline:
            time.sleep(2)
            if (tmp / "optuna.db").exists():
                try:
                    seen.append(len(load_study(tmp).trials))
                except KeyError:  # not created yet
                    pass
        proc.wait(timeout=max(1.0, deadline - time.time()))
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    yield SmokeSearch(tmp, stdout, seen, start)
    for heavy in ("ray_results", "mlartifacts"):  # checkpoints and the model: hundreds of MB
        shutil.rmtree(tmp / heavy, ignore_errors=True)


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


@pytest.fixture(autouse=True)
def _no_tracking_store_from_an_earlier_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mlflow.set_tracking_uri`` (the champion's registration calls it) also sets ``$MLFLOW_TRACKING_URI``,
    which the commands now honour: a store left there by one test would be where the next test's search
    subprocess logs. Every test starts without it (and without ``$EGOSEARCH_WORKDIR``); a test sets its own."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("EGOSEARCH_WORKDIR", raising=False)
