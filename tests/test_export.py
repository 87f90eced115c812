"""The model on a device: the streaming step equals the whole-clip model; its ONNX export passes the
parity check on real clips for every RGB variant (or is refused with the figures); the exported
example classifies frames with ONNX Runtime and no torch, as the pyfunc does; ``tuning.export
--champion`` logs the export to the champion's run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

import egomodel.export as ex
from egomodel.data import layout
from egomodel.data.transforms import normalize_frames
from egomodel.model import build_model
from egomodel.model import checkpoint as ck
from egomodel.model.streaming import StreamingStep, stream
from tests.conftest import env, tiny_config

CLASSES = ["shake_box", "shake_cup", "slide_box", "stir_cup"]  # the tiny data set's (tests/conftest.py)


def _model(variant: str, seed: int = 0) -> torch.nn.Module:
    """A random model of ``variant`` whose every weight moved off its initial value (so the feedback
    branch is not the identity it starts as), feedback switched on as after stage 3."""
    cfg = tiny_config(Path("."), model__variant=variant, model__hidden=16)
    torch.manual_seed(seed)
    model = build_model(cfg, len(CLASSES))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.feedback_on.fill_(variant == "feedback")
    return model.eval()


@pytest.mark.parametrize("variant", ["convlstm", "attention", "ms", "feedback"])
def test_the_streaming_step_gives_the_whole_clip_models_probabilities(variant):
    model = _model(variant)
    frames = torch.randint(0, 256, (2, 3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        whole = torch.softmax(model(normalize_frames(frames)).logits, 1)
    streamed = stream(StreamingStep(model), frames)
    assert torch.allclose(streamed, whole, atol=1e-6), (streamed - whole).abs().max()


def test_the_feedback_step_uses_the_previous_frames_ms_features():
    step = StreamingStep(_model("feedback"))
    state = step.initial_state(1)
    frame = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        first = step(frame, *state.values())
        later = step(frame, state["h"], state["c"], torch.randn_like(state["ms_prev"]), torch.zeros(1, dtype=bool))
        ignored = step(frame, state["h"], state["c"], torch.randn_like(state["ms_prev"]), torch.ones(1, dtype=bool))
    assert not torch.allclose(first[0], later[0])  # frame t-1's features change frame t's prediction
    assert torch.equal(first[0], ignored[0])  # at a clip's first frame they are ignored


def _checkpoint(tmp: Path, root: Path, variant: str) -> Path:
    assert layout.class_names(layout.scan(root)) == CLASSES
    cfg = tiny_config(root, model__variant=variant, model__hidden=16)
    return ck.save(tmp / f"{variant}.pt", {"model": _model(variant).state_dict(), "config": cfg.to_dict(),
                                            "classes": CLASSES, "stage": 3, "epoch": 1})


@pytest.mark.parametrize("variant", ["attention", "ms"])
def test_export_passes_parity_on_real_clips(tmp_path, tiny_root, variant):
    """(``feedback``, the third RGB variant, is exported from the smoke search's trained champion below.)"""
    parity = ex.export_checkpoint(_checkpoint(tmp_path, tiny_root, variant), tmp_path / "out", clips=4)
    assert parity["passed"] and parity["clips"] == 4 and parity["frames"] == 3
    assert parity["max_abs_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
    assert parity["latency_s_per_frame_1_thread"] > 0 and parity["latency_s_per_frame_all_threads"] > 0
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["classes"] == CLASSES and meta["image_size"] == 64 and meta["inputs"] == ["frame", "h", "c"]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"model.onnx", "model.json", "parity.json",
                                                              "classify_video.py"}


def test_a_parity_failure_refuses_the_export(tmp_path, tiny_root, monkeypatch, capsys):
    monkeypatch.setattr(ex, "PARITY_ATOL", -1.0)  # no export can pass: the refusal path
    code = ex.run_cli(ex.main, ["--checkpoint", str(_checkpoint(tmp_path, tiny_root, "attention")),
                                "--out", str(tmp_path / "out"), "--clips", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "does not match the PyTorch model" in err and "max |diff|" in err
    assert not (tmp_path / "out" / "model.onnx").exists() and (tmp_path / "out" / "parity.json").exists()


@pytest.mark.parametrize(("variant", "message"), [("flow", "cannot be streamed"), ("two_stream", "cannot be streamed")])
def test_flow_variants_are_refused(tmp_path, tiny_root, variant, message, capsys):
    cfg = tiny_config(tiny_root, model__variant=variant)
    model = build_model(cfg, len(CLASSES))
    path = ck.save(tmp_path / "m.pt", {"model": model.state_dict(), "config": cfg.to_dict(), "classes": CLASSES,
                                       "stage": 1, "epoch": 1})
    assert ex.run_cli(ex.main, ["--checkpoint", str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert ex.run_cli(ex.main, ["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "out")]) == 2
    assert "nope.pt does not exist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def champion_export(smoke_search, tmp_path_factory):
    """``python -m tuning.export --champion`` on a copy of the smoke search's store (a trained feedback model)."""
    tmp = tmp_path_factory.mktemp("export")
    uri = smoke_search.own_store(tmp)
    proc = subprocess.run([sys.executable, "-m", "tuning.export", "--champion", "--tracking-uri", uri,
                           "--out", str(tmp / "onnx"), "--clips", "4"], cwd=tmp, env=env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return tmp, uri


def test_champion_export_is_logged_to_its_run(champion_export):
    tmp, uri = champion_export
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version_by_alias("egosearch-test_space", "champion")
    run = client.get_run(version.run_id)
    assert run.data.tags["egosearch.export"] == "onnx"
    assert run.data.metrics["export_parity_max_abs_diff"] <= 1e-4
    assert run.data.metrics["export_parity_top1_agreement"] == 1.0
    assert run.data.metrics["export_latency_ms_1_thread"] > 0
    logged = {a.path for a in client.list_artifacts(version.run_id, "onnx")}
    assert {"onnx/model.onnx", "onnx/model.json", "onnx/parity.json", "onnx/classify_video.py"} <= logged
    meta = json.loads((tmp / "onnx" / "model.json").read_text())
    assert meta["variant"] == "feedback" and meta["inputs"] == ["frame", "h", "c", "ms_prev", "first"]


NO_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")  # the example with torch not importable


def test_the_onnx_example_classifies_clips_as_the_pyfunc_does_without_torch(champion_export, tiny_root):
    tmp, uri = champion_export
    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model("models:/egosearch-test_space@champion")
    meta = json.loads((tmp / "onnx" / "model.json").read_text())
    clips = layout.scan(tiny_root, ["S2"], min_frames=meta["frames"])[:4]
    from egomodel.config import from_dict
    from egomodel.training.engine import make_dataset

    cfg = from_dict({}, {"data.root": str(tiny_root), "data.image_size": meta["image_size"],
                         "data.frames": meta["frames"], "model.variant": "feedback"})
    dataset = make_dataset(cfg, clips, meta["classes"])
    for i, clip in enumerate(clips):
        pixels = dataset[i]["frames"].numpy()[None].astype(np.float32)  # the signature's dtype; normalized false
        expected = meta["classes"][int(np.asarray(pyfunc.predict(pixels)).argmax())]
        proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp / "onnx" / "classify_video.py"),
                               str(clip.rgb[0].parent), "--threads", "1"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1])["top1"] == expected, clip.rgb[0].parent


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_root):
    """A random ``attention`` checkpoint registered as a champion by :func:`tuning.tracking.champion.register`
    in a store of its own: (tracking URI, model URI, uint8 frames of two clips, normalised copies)."""
    from tuning.tracking.champion import register

    tmp = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("served", artifact_location=str(tmp / "artifacts")))
    model_uri = register(client, run.info.run_id, _checkpoint(tmp, tiny_root, "attention"), "served")
    raw = np.random.default_rng(1).integers(0, 256, (2, 3, 3, 64, 64), dtype=np.uint8)
    return uri, model_uri, raw, normalize_frames(torch.from_numpy(raw)).numpy()


def test_the_champion_reads_pixels_or_normalised_frames_as_its_params_say(registered):
    uri, model_uri, raw, normalised = registered
    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    spec = pyfunc.metadata.get_input_schema().inputs[0]
    assert spec.name == "frames" and spec.type == np.dtype(np.float32) and spec.shape == (-1, -1, 3, 64, 64)
    as_pixels = pyfunc.predict(raw.astype(np.float32))  # normalized false by default: 0..255
    assert np.allclose(as_pixels, pyfunc.predict(normalised, params={"normalized": True}), atol=1e-6)
    assert as_pixels.shape == (2, len(CLASSES)) and np.allclose(as_pixels.sum(1), 1, atol=1e-5)
    with pytest.raises(ValueError, match=r"are not pixel values 0-255.*normalized.*true"):
        pyfunc.predict(normalised)  # normalised frames sent as pixels: refused, not misread
    with pytest.raises(ValueError, match=r"are not normalised frames.*normalized false"):
        pyfunc.predict(raw.astype(np.float32), params={"normalized": True})  # pixels sent as normalised


def test_mlflow_models_serve_answers_as_predict_does(registered, tmp_path):
    """``mlflow models serve --env-manager local`` on a loopback port: a REST request of pixel values
    and one of normalised frames give ``predict``'s probabilities."""
    import os
    import socket
    import time
    import urllib.request

    import uvicorn

    uri, model_uri, raw, normalised = registered
    expected = mlflow.pyfunc.load_model(model_uri).predict(raw.astype(np.float32))
    # the server execs ``uvicorn``: the scripts folder of the environment uvicorn is installed in
    # (<venv>/lib/pythonX.Y/site-packages/uvicorn -> <venv>/bin) goes first on PATH
    scripts = [Path(sys.executable).parent, Path(uvicorn.__file__).parents[4] / "bin"]
    path = os.pathsep.join([*map(str, scripts), os.environ.get("PATH", "")])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                             "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env={**env(), "MLFLOW_TRACKING_URI": uri, "PATH": path}, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open("w"))
    try:
        for _ in range(120):  # up to 60 s to start
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.5)
        for frames, normalized in ((raw.astype(np.float32), False), (normalised, True)):
            body = json.dumps({"inputs": {"frames": frames.tolist()}, "params": {"normalized": normalized}})
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body.encode(),
                                         {"Content-Type": "application/json"})
            got = np.asarray(json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"])
            assert np.allclose(got, expected, atol=1e-5), normalized
    finally:
        proc.terminate()
        proc.wait(timeout=30)
