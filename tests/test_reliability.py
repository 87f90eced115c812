"""Faults injected, nothing lost: failed trials, the MLflow server going away, fuzzed command lines,
and checkpoints loaded without unpickling arbitrary objects."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_search import env, search_cmd, write_space
from tuning.space import load_space
from tuning.tracking import mlflow_runs, write_retry
from tuning.tracking.callback import MlflowCallback
from tuning.tracking.mlflow_runs import TrackingError, check_reachable, parent_run
from tuning.tracking.trial_files import error_reason

REPO = Path(__file__).resolve().parents[1]

FPE = "FloatingPointError: training loss is nan (stage 1 epoch 2/3); lower the learning rate or alpha"


# ---------------------------------------------------------------------------------------- helpers
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


class FakeTrial:
    """What the callback reads from a Ray ``Trial``."""

    def __init__(self, trial_id: str, root: Path, config: dict | None = None) -> None:
        self.trial_id = trial_id
        self.config = config or {"model.alpha": 1.0, "model.tau": 0.2, "train.stage3.lr": 1e-3}
        self.last_result: dict = {}
        self.checkpoint = None
        self.local_path = str(root / trial_id)
        Path(self.local_path).mkdir(parents=True, exist_ok=True)
        self.run_metadata = SimpleNamespace(num_failures=0)
        self.error_file = None

    def __str__(self) -> str:
        return f"run_trial_{self.trial_id}"

    def fail(self, message: str = FPE) -> None:
        """Append to error.txt what Ray 2.60's ``Trial.handle_error`` writes for a RayTaskError."""
        from ray.exceptions import RayTaskError

        name, _, msg = message.partition(": ")
        try:
            raise {"FloatingPointError": FloatingPointError, "ValueError": ValueError}[name](msg)
        except (FloatingPointError, ValueError) as e:
            exc = RayTaskError("ImplicitFunc.train", traceback.format_exc(), e).as_instanceof_cause()
        self.run_metadata.num_failures += 1
        self.error_file = str(Path(self.local_path) / "error.txt")
        with open(self.error_file, "a") as f:
            f.write(f"Failure # {self.run_metadata.num_failures} (occurred at 2026-01-01_00-00-00)\n{exc}\n")


def epoch_result(g: int, final: bool = False) -> dict:
    stage, stage_epoch = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1), (3, 2)][g - 1]
    r = {"global_epoch": g, "stage": stage, "stage_epoch": stage_epoch, "total_epochs": 7, "final": final,
         "train_loss": 2.0 - 0.1 * g, "train_top1": 0.1 * g, "val_loss": 2.2 - 0.1 * g, "val_top1": 0.05 * g,
         "lr": 1e-3, "data_wait_fraction": 0.01}
    if final:
        r.update(epoch_val_top1=r["val_top1"], val_top1=0.3)
    return r


def final_checkpoint(root: Path):
    from ray import tune

    d = root / "final_ckpt"
    (d / "plots").mkdir(parents=True)
    (d / "stage3_best.pt").write_bytes(b"weights")
    (d / "last.pt").write_bytes(b"resume state")
    (d / "metrics.json").write_text("{}")
    (d / "per_class_val.csv").write_text("class,clips,correct,accuracy\n")
    (d / "confusion_val.png").write_bytes(b"png")
    (d / "plots" / "cam_val.png").write_bytes(b"png")
    return tune.Checkpoint.from_directory(str(d))


def run_trial_events(cb: MlflowCallback, trial: FakeTrial, epochs: range, ckpt_root: Path | None = None) -> None:
    for g in epochs:
        final = ckpt_root is not None and g == 7
        trial.last_result = epoch_result(g, final)
        cb.on_trial_result(0, [], trial, trial.last_result)
    if ckpt_root is not None:
        trial.checkpoint = final_checkpoint(ckpt_root)
        cb.on_trial_complete(0, [], trial)


def children(client: mlflow.MlflowClient, parent_id: str) -> dict[str, mlflow.entities.Run]:
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.data.tags["ray.trial_id"]: r for r in runs}


def artifact_paths(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def steps(client: mlflow.MlflowClient, run_id: str, key: str = "val_top1") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture
def space(tmp_path):
    return load_space(write_space(tmp_path))


def new_callback(uri: str, space, name: str = "exp") -> tuple[MlflowCallback, str]:
    client = check_reachable(uri)
    parent = parent_run(client, name, f"/ray/{name}", space, "fingerprint", resume=False)
    return MlflowCallback(uri, parent, space, {"data.root": "/data", "train.seed": 0}), parent


# ----------------------------------------------------------------------------------- failed trials
def test_error_reason_from_rays_error_text(tmp_path):
    trial = FakeTrial("t1", tmp_path)
    assert error_reason(trial) == "trial failed (Ray wrote no error text)"
    trial.fail("ValueError: first failure")
    trial.fail(FPE)  # Ray appends one block per failure: the last one is the reason
    assert error_reason(trial) == FPE
    text = Path(trial.error_file).read_text()
    assert "Traceback" in text or "File " in text  # the whole text goes to error.txt, the tag gets one line
    from ray.exceptions import ActorDiedError

    died = text + f"Failure # 3 (occurred at x)\n{ActorDiedError()}\n"
    assert error_reason(trial, died) == "The actor died unexpectedly before finishing this task."


def test_failed_trial_is_failed_in_mlflow_with_its_reason(tmp_path, space):
    cb, parent = new_callback(f"sqlite:///{tmp_path / 'm.db'}", space)
    bad, good = FakeTrial("bad", tmp_path), FakeTrial("good", tmp_path)
    for t in (bad, good):
        cb.on_trial_start(0, [], t)
    run_trial_events(cb, bad, range(1, 2))
    bad.fail()
    cb.on_trial_recover(0, [], bad)  # Ray retries it from its last checkpoint ...
    bad.fail()
    cb.on_trial_error(0, [], bad)  # ... and gives up
    run_trial_events(cb, good, range(1, 8), tmp_path)  # the search goes on
    cb.on_experiment_end([])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    runs = children(client, parent)
    r = runs["bad"]
    assert r.info.status == "FAILED"
    assert r.data.tags["egosearch.outcome"] == "failed" and r.data.tags["error"] == FPE
    assert r.data.tags["egosearch.retries"] == "1" and r.data.tags["egosearch.last_error"] == FPE
    assert "error.txt" in artifact_paths(client, r.info.run_id)
    assert runs["good"].info.status == "FINISHED" and runs["good"].data.tags["egosearch.outcome"] == "completed"
    assert {"checkpoint/stage3_best.pt", "plots/cam_val.png", "confusion_val.png", "per_class_val.csv",
            "metrics.json"} <= artifact_paths(client, runs["good"].info.run_id)


def test_early_stopped_trial_is_killed_with_its_curves(tmp_path, space):
    cb, parent = new_callback(f"sqlite:///{tmp_path / 'm.db'}", space)
    t = FakeTrial("t", tmp_path)
    cb.on_trial_start(0, [], t)
    run_trial_events(cb, t, range(1, 5))
    with open(Path(t.local_path) / "result.json", "w") as f:  # what Ray's JSON logger wrote on the driver
        f.writelines(json.dumps(epoch_result(g)) + "\n" for g in range(1, 5))
    cb.on_trial_complete(0, [], t)  # ASHA stopped it at epoch 4
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = children(client, parent)["t"]
    assert run.info.status == "KILLED" and run.data.tags["egosearch.outcome"] == "early_stopped"
    assert run.data.tags["stopped_at_epoch"] == "4"
    assert artifact_paths(client, run.info.run_id) == {"plots/training_curves.png"}


def test_replayed_epochs_of_a_retried_trial_are_logged_once(tmp_path, space):
    """Trials hand Ray a checkpoint every ``checkpoint_interval_s``: a retry repeats the epochs after it.
    MLflow keeps the first value of each, also when the driver itself restarted in between."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cb, parent = new_callback(uri, space)
    t = FakeTrial("t", tmp_path)
    cb.on_trial_start(0, [], t)
    run_trial_events(cb, t, range(1, 5))
    t.fail()
    cb.on_trial_recover(0, [], t)
    replayed = [{**epoch_result(g), "train_loss": 9.0} for g in (3, 4)]  # from a checkpoint at epoch 2
    for r in replayed:
        cb.on_trial_result(0, [], t, r)
    # the driver restarts (search --resume): a new callback finds the run and what it holds
    cb2 = MlflowCallback(uri, parent, space, {"data.root": "/data", "train.seed": 0})
    cb2.on_trial_result(0, [], t, {**epoch_result(4), "train_loss": 9.0})  # replayed once more
    cb2.on_trial_result(0, [], t, epoch_result(5))
    run_trial_events(cb2, t, range(6, 8), tmp_path)
    client = mlflow.MlflowClient(uri)
    rid = children(client, parent)["t"].info.run_id
    assert steps(client, rid, "train_loss") == list(range(1, 8))
    assert 9.0 not in {m.value for m in client.get_metric_history(rid, "train_loss")}


# --------------------------------------------------------------------- MLflow server goes away
def test_mlflow_server_killed_mid_search_nothing_lost(tmp_path, space, server, monkeypatch, capsys):
    """Buffer and retry: the server is SIGKILLed between trial results, the driver is restarted from
    the state Ray saves while the server is still down, then the server comes back."""
    server.start()
    cb, parent = new_callback(server.uri, space)
    at_start = pickle.dumps(cb)  # what Ray keeps in tuner.pkl
    a, b = FakeTrial("a", tmp_path), FakeTrial("b", tmp_path)
    cb.on_trial_start(0, [], a)
    run_trial_events(cb, a, range(1, 3))
    assert cb.pending == 0

    server.kill()
    t0 = time.monotonic()
    cb.on_trial_start(0, [], b)  # b's run cannot be created now
    run_trial_events(cb, a, range(3, 8), tmp_path)  # a finishes while the server is down
    run_trial_events(cb, b, range(1, 3))
    b.fail()
    cb.on_trial_error(0, [], b)
    for _ in range(20):
        cb.on_step_end(0, [])
    assert time.monotonic() - t0 < 30, "callbacks must not block while MLflow is down"
    assert cb.pending > 0
    assert "unreachable" in capsys.readouterr().err

    # the experiment ends with the server still down: a clean, resumable stop
    monkeypatch.setenv(write_retry.FLUSH_TIMEOUT_ENV, "1")
    cb.on_experiment_end([])
    assert mlflow_runs.undelivered(parent) == cb.pending > 0
    with pytest.raises(TrackingError, match="--resume"):
        mlflow_runs.log_search_summary(mlflow.MlflowClient(server.uri), parent,
                                       SimpleNamespace(experiment_path=None), space)

    # a new driver (Ray restores the callback from tuner.pkl, then its saved state), server back
    saved = pickle.loads(pickle.dumps(cb.get_state()))
    cb2 = pickle.loads(at_start)
    cb2.set_state(saved)
    server.start()
    cb2.on_experiment_end([])
    assert cb2.pending == 0 and mlflow_runs.undelivered(parent) == 0

    client = mlflow.MlflowClient(server.uri)
    runs = children(client, parent)
    assert sorted(runs) == ["a", "b"]  # one run per trial: none created twice
    ra, rb = runs["a"], runs["b"]
    assert steps(client, ra.info.run_id) == list(range(1, 8))  # every epoch, each once
    assert steps(client, ra.info.run_id, "train_loss") == list(range(1, 8))
    assert [m.value for m in client.get_metric_history(ra.info.run_id, "best_val_top1")] == [0.3]
    assert ra.info.status == "FINISHED" and ra.data.tags["egosearch.outcome"] == "completed"
    assert {f"stage{s}_start_epoch" for s in (1, 2, 3)} <= set(ra.data.tags)
    assert ra.data.params["model.alpha"] == "1.0"
    assert {"checkpoint/stage3_best.pt", "plots/cam_val.png", "metrics.json"} <= artifact_paths(client, ra.info.run_id)
    assert steps(client, rb.info.run_id) == [1, 2]
    assert rb.info.status == "FAILED" and rb.data.tags["error"] == FPE
    assert rb.data.params["train.stage3.lr"] == "0.001"
    # the search's summary goes through now
    logged = mlflow_runs.log_search_summary(client, parent, SimpleNamespace(experiment_path=None), space)
    assert "search/trials.csv" in logged


def test_a_write_mlflow_rejects_is_dropped_not_blocking(tmp_path, space, capsys):
    cb, parent = new_callback(f"sqlite:///{tmp_path / 'm.db'}", space)
    t = FakeTrial("t", tmp_path)
    cb.on_trial_start(0, [], t)
    cb._put("t", "batch", tags={"x" * 300: "bad key"})  # MLflow: INVALID_PARAMETER_VALUE, retrying cannot help
    run_trial_events(cb, t, range(1, 8), tmp_path)
    assert cb.pending == 0
    assert "rejected a write" in capsys.readouterr().err
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = children(client, parent)["t"]
    assert steps(client, run.info.run_id) == list(range(1, 8)) and run.info.status == "FINISHED"


def test_unreachable_at_start_is_a_clear_error():
    for uri in (f"http://127.0.0.1:{free_port()}", "badscheme://x"):
        t0 = time.monotonic()
        with pytest.raises(TrackingError, match="not reachable"):
            check_reachable(uri)
        assert time.monotonic() - t0 < 20


# ------------------------------------------------------------------------------ fuzzed CLI input
_SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
_NUMBER = st.one_of(st.integers(-3, 3), st.integers(-2**70, 2**70), st.sampled_from([2**32 - 1, 2**32, 2**63]))
_NUMBER_TEXT = st.one_of(_NUMBER.map(str), _SAFE_TEXT, st.sampled_from(["1.5", "nan", "", " 2", "0x10", "1_000"]))


def _values(tmp: Path, root: Path, good_space: Path) -> dict[str, st.SearchStrategy]:
    """Per option: values that should work, values that should be refused, and random text."""
    return {
        "--space": st.one_of(st.sampled_from([str(good_space), "smoke", "no_such_space", str(tmp / "bad.yaml"),
                                              str(tmp / "empty"), "", str(tmp / "afile"), "../x"]), _SAFE_TEXT),
        "--data": st.one_of(st.sampled_from([str(root), "/nonexistent/GTEA61", str(tmp / "empty"), str(tmp / "afile"),
                                             "synthetic", ""]), _SAFE_TEXT),
        "--num-samples": _NUMBER_TEXT,
        "--max-concurrent": _NUMBER_TEXT,
        "--seed": _NUMBER_TEXT,
        "--address": st.one_of(st.sampled_from(["auto", "ray://127.0.0.1:1", ""]), _SAFE_TEXT),
        "--storage": st.one_of(st.sampled_from(["{here}/rr", "relative_dir", "foo://bar", "~/egosearch_fuzz_rr", "",
                                                "/dev/null/x", "file://{here}/rr2", "."]), _SAFE_TEXT),
        "--tracking-uri": st.one_of(st.sampled_from(["sqlite:///{here}/mlflow.db", f"http://127.0.0.1:{free_port()}",
                                                     "file://{here}/mlruns", "badscheme://x", "", "relative_store"]),
                                    _SAFE_TEXT),
        "--experiment": st.one_of(st.sampled_from(["a/b", "..", "../up", ".", "x y", "é", "a:b", " "]), _SAFE_TEXT),
        "--model-name": st.one_of(st.sampled_from(["m", "a/b", "a:b", " ", ""]), _SAFE_TEXT),
    }


def _argv_strategy(values: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    option = st.one_of(
        *[st.tuples(st.just(k), v) for k, v in values.items()],
        st.tuples(st.just("--resume"), st.none()),
        st.tuples(st.sampled_from(["--bogus", "-x", "positional", "--no-stage-store", "-h"]), st.none()),
        st.tuples(st.sampled_from(list(values)), st.none()),  # an option without its value
    )
    return st.lists(option, max_size=6).map(lambda pairs: [t for k, v in pairs for t in ([k] if v is None else [k, v])])


def test_fuzzed_command_lines_run_or_fail_clearly(tmp_path, tiny_root, monkeypatch):
    """220 generated argument sets (derandomized: the same ones every run) and fixed edge cases for
    ``python -m tuning.search``, in-process. Ray is not started and no trial runs (``connect_ray``,
    ``Tuner.fit`` and ``finish`` are stubbed; the stub checks the model name MLflow will register);
    the rest is real: space, data, MLflow store, searcher, scheduler, ``Tuner`` construction. Each
    one returns 0, or exits 2 with a message saying what is wrong; nothing else escapes."""
    import ray.tune
    from mlflow.utils.validation import _validate_model_name

    from tuning import search

    good_space = write_space(tmp_path)
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    template = tmp_path / "template.db"
    check_reachable(f"sqlite:///{template}")  # an MLflow store with its schema made, copied per example
    real_resolve = search.resolve_root
    monkeypatch.setattr(search, "resolve_root", lambda r: tiny_root if r == "synthetic" else real_resolve(r))
    monkeypatch.setattr(search, "connect_ray", lambda address, storage: None)
    monkeypatch.setattr(search, "trial_resources", lambda space: dict(space.resources))
    monkeypatch.setattr(ray.tune, "with_parameters", lambda fn, **kw: fn)
    monkeypatch.setattr(ray.tune, "with_resources", lambda fn, resources: fn)
    monkeypatch.setattr(ray.tune.Tuner, "fit", lambda self: "results")

    def finish(results, space, client, parent_id, name, args, tracking_uri):
        assert results == "results"
        _validate_model_name(args.model_name or f"egosearch-{name}")  # what registering the champion needs
        return 0

    monkeypatch.setattr(search, "finish", finish)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # "~/..." storage stays inside the test folder
    outcomes: Counter = Counter()
    work = tmp_path / "work"
    work.mkdir()

    edge_cases = [["--storage", "foo://bar"], ["--storage", "/dev/null/x"], ["--storage", "relative_dir"],
                  ["--storage", "~/egosearch_fuzz_rr"], ["--experiment", "a/b"], ["--experiment", ".."],
                  ["--model-name", "a:b"], ["--seed", "-1"], ["--seed", str(2**32)], ["--tracking-uri", "badscheme://x"],
                  ["--tracking-uri", "relative_store"], ["--data", str(tmp_path / "afile")], ["--space", "../x"],
                  ["--num-samples", "0"], ["--max-concurrent", "-1"], ["--resume"], []]

    @settings(max_examples=220, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(_argv_strategy(_values(tmp_path, tiny_root, good_space)))
    def one(argv):
        here = Path(tempfile.mkdtemp(dir=work))
        shutil.copy(template, here / "mlflow.db")
        argv = [a.replace("{here}", str(here)) for a in argv]
        out, err = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(here)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = search.main(argv)
        except SystemExit as e:  # argparse: usage and "error: ..." (or -h)
            rc = e.code
            assert rc == 0 and "usage:" in out.getvalue() or rc == 2 and "error:" in err.getvalue(), (argv, rc)
            outcomes["argparse"] += 1
        except BaseException as e:  # noqa: BLE001
            raise AssertionError(f"{argv!r} raised {type(e).__name__}: {e}\n{traceback.format_exc()}") from None
        else:
            assert rc in (0, 2), (argv, rc, err.getvalue()[-500:])
            if rc == 2:
                msg = err.getvalue()
                assert msg.startswith("error: ") and "Traceback" not in msg and len(msg.strip()) > 10, (argv, msg)
            outcomes["ran" if rc == 0 else "refused"] += 1
        finally:
            os.chdir(cwd)
            shutil.rmtree(here, ignore_errors=True)

    for argv in edge_cases:  # always tried, whatever the generator draws
        one.hypothesis.inner_test(argv)
    one()
    assert sum(outcomes.values()) >= 200
    assert outcomes["ran"] >= 5 and outcomes["refused"] >= 20 and outcomes["argparse"] >= 20, outcomes


# ----------------------------------------------------------------------------------------- security
def _torch_load_uses(path: Path) -> tuple[list[ast.Call], list[str]]:
    """``torch.load(...)`` calls in a file, and any other way the file reaches ``torch.load``."""
    tree = ast.parse(path.read_text(), str(path))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "load" and isinstance(n.func.value, ast.Name) and n.func.value.id == "torch"]
    called = {id(c.func) for c in calls}
    other = [f"{path}:{n.lineno}" for n in ast.walk(tree)
             if (isinstance(n, ast.ImportFrom) and n.module == "torch" and "load" in {a.name for a in n.names})
             or (isinstance(n, ast.Attribute) and n.attr == "load" and isinstance(n.value, ast.Name)
                 and n.value.id == "torch" and id(n) not in called)]
    return calls, other


def test_every_torch_load_is_weights_only():
    files = [p for p in REPO.rglob("*.py") if not any(part.startswith(".") or part in ("build", "venv")
                                                       for part in p.relative_to(REPO).parts)]
    calls, other = {}, []
    for p in files:
        found, more = _torch_load_uses(p)
        calls.update({f"{p.relative_to(REPO)}:{c.lineno}": c for c in found})
        other += more
    assert any(k.startswith("egomodel/model/checkpoint.py") for k in calls)  # the check sees the real loader
    unsafe = [k for k, c in calls.items()
              if not any(kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                         for kw in c.keywords)]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"
    assert not other, f"torch.load reached other than by a direct call (alias, from-import): {other}"


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    from egomodel.model import checkpoint as ck

    torch.save({"format": ck.FORMAT, "model": {}, "x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot be read"):
        ck.load(tmp_path / "evil.pt")


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
