"""Input from outside is refused cleanly: fuzzed ``tuning.search`` command lines run or fail with a
one-line error, and checkpoints are loaded without unpickling arbitrary objects."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import shutil
import tempfile
import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import free_port, write_space
from tuning.tracking.mlflow_runs import check_reachable

REPO = Path(__file__).resolve().parents[1]


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
        "--artifact-root": st.one_of(st.sampled_from(["{here}/arts", "s3://bucket/arts", "/dev/null/x", ""]),
                                     _SAFE_TEXT),
        "--log-checkpoints": st.one_of(st.sampled_from(["best", "all", "champion-only", "none", "every"]), _SAFE_TEXT),
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
    monkeypatch.setattr(search, "connect_ray", lambda address: None)
    monkeypatch.setattr(search.storage_check, "check", lambda storage, remote: ("marker", "checked"))
    monkeypatch.setattr(search, "trial_resources", lambda space, address: dict(space.resources))
    monkeypatch.setattr(search, "start_lease_actor", lambda: (None, None))  # no Ray here
    monkeypatch.setattr(search.feasibility, "check_before_start", lambda resources, local: None)  # nor here
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
