"""``python -m egomodel.export --checkpoint FILE --out DIR [--data PATH] [--clips N] [--users U ...]``

A checkpoint's model exported for a device as a streaming step in ONNX: one frame per call, the
recurrent state carried by the caller (:mod:`egomodel.model.streaming`). The export is checked against
the PyTorch model in ONNX Runtime on real clips of the data set (the test users unless ``--users``):
the step looped over each clip's T frames must give the whole-clip model's class probabilities within
``1e-4`` and the same top-1 for every clip, or the export is refused (exit 2, the figures printed, no
``model.onnx`` left behind).

Writes into DIR: ``model.onnx``; ``model.json`` (the classes, frame size, input and output names,
the number of frames the model was trained on); ``parity.json`` (the parity figures, and the median
latency of one frame's step in ONNX Runtime on this machine's CPU with one thread and with all);
``classify_video.py``, an example that classifies a video file frame by frame with ONNX Runtime,
NumPy and OpenCV (no torch).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egomodel.cli import run_cli
from egomodel.config import from_dict
from egomodel.data import layout
from egomodel.data.dataset import resolve_root
from egomodel.model.checkpoint import load_model
from egomodel.model.streaming import StreamingStep, stream
from egomodel.training.engine import make_dataset

PARITY_ATOL = 1e-4  # class probabilities, after the step has looped over a clip's frames
EXAMPLE = Path(__file__).with_name("classify_video.py")


class ParityError(ValueError):
    """The exported model does not give the PyTorch model's outputs; the export is refused."""


def export_onnx(step: StreamingStep, path: Path) -> Path:
    """``torch.onnx.export(..., dynamo=True)`` of one step, the batch dimension dynamic."""
    state = step.initial_state(1)
    size = step.model.image_size
    frame = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic: dict[str, Any] = {"frame": {0: batch}, "h": {0: batch}, "c": {0: batch}}
    if step.feedback:
        dynamic.update(ms_prev={0: batch}, first=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices, not about this model
        torch.onnx.export(step, (frame, *state.values()), str(path), dynamo=True, input_names=step.input_names,
                          output_names=step.output_names, dynamic_shapes=dynamic, external_data=False,
                          verbose=False)
    return path


def run_onnx(session: Any, step: StreamingStep, frames: np.ndarray) -> np.ndarray:
    """Loop the ONNX step over clips: frames (B, T, 3, S, S) uint8 -> (B, classes) probabilities."""
    state = {k: v.numpy() for k, v in step.initial_state(frames.shape[0]).items()}
    probs = None
    for t in range(frames.shape[1]):
        out = session.run(None, {"frame": np.ascontiguousarray(frames[:, t]), **state})
        probs, state["h"], state["c"] = out[:3]
        if step.feedback:
            state["ms_prev"], state["first"] = out[3], np.zeros(1, dtype=bool)
    return probs


def parity_clips(cfg: Any, classes: list[str], users: list[str] | None, n: int) -> np.ndarray:
    """Up to ``n`` clips of ``users`` at the evaluation view, as the loader gives them: (N, T, 3, S, S) uint8."""
    root = resolve_root(cfg.data.root)
    clips = layout.scan(root, users or cfg.data.test_users, min_frames=cfg.data.frames)
    clips = [c for c in clips if c.label_name in classes][:n]
    if not clips:
        raise ValueError(f"no clips of users {users or cfg.data.test_users} with the model's classes under {root}: "
                         "parity needs real clips (--data, --users)")
    ds = make_dataset(cfg, clips, classes)
    return np.stack([ds[i]["frames"].numpy() for i in range(len(clips))])


def check_parity(step: StreamingStep, onnx_path: Path, frames: np.ndarray, threads: int = 0) -> dict[str, Any]:
    """The ONNX step against the PyTorch whole-clip model on ``frames``: the figures."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        from egomodel.data.transforms import normalize_frames

        reference = torch.softmax(step.model(normalize_frames(torch.from_numpy(frames))).logits.float(), 1).numpy()
    streamed = stream(step, torch.from_numpy(frames)).numpy()
    exported = run_onnx(session, step, frames)
    diff = float(np.abs(exported - reference).max())
    agree = float((exported.argmax(1) == reference.argmax(1)).mean())
    return {"clips": int(frames.shape[0]), "frames": int(frames.shape[1]), "max_abs_diff": diff,
            "torch_stream_max_abs_diff": float(np.abs(streamed - reference).max()), "top1_agreement": agree,
            "atol": PARITY_ATOL, "passed": diff <= PARITY_ATOL and agree == 1.0}


def step_latency(onnx_path: Path, step: StreamingStep, threads: int, reps: int = 20) -> float:
    """Median seconds of one frame's step in ONNX Runtime on this machine's CPU (batch 1, after a warm-up)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    size = step.model.image_size
    feed = {"frame": np.zeros((1, 3, size, size), np.uint8),
            **{k: v.numpy() for k, v in step.initial_state(1).items()}}
    session.run(None, feed)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def export_checkpoint(checkpoint: str | Path, out: str | Path, data: str | None = None, users: list[str] | None = None,
                      clips: int = 8) -> dict[str, Any]:
    """Export, check parity, publish DIR's files; raises :class:`ParityError` (nothing published) on a mismatch."""
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    model, cfg, classes = load_model(checkpoint)
    if data is not None:
        cfg = from_dict(cfg.to_dict(), {"data.root": data})
    step = StreamingStep(model.float())  # parity is against the fp32 model
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        t0 = time.perf_counter()
        path = export_onnx(step, Path(tmp) / "model.onnx")
        parity = {**check_parity(step, path, parity_clips(cfg, classes, users, clips)),
                  "export_s": time.perf_counter() - t0}
        if parity["passed"]:
            parity.update(latency_s_per_frame_1_thread=step_latency(path, step, 1),
                          latency_s_per_frame_all_threads=step_latency(path, step, 0))
        (out / "parity.json").write_text(json.dumps(parity, indent=2))
        if not parity["passed"]:
            raise ParityError(f"the exported model does not match the PyTorch model on {parity['clips']} clips: "
                              f"max |diff| {parity['max_abs_diff']:.2e} (allowed {PARITY_ATOL:.0e}), top-1 agreement "
                              f"{parity['top1_agreement']:.3f}; not exported (figures in {out / 'parity.json'})")
        shutil.move(str(path), out / "model.onnx")
    meta = {"variant": cfg.model.variant, "classes": classes, "image_size": cfg.data.image_size,
            "frames": cfg.data.frames, "inputs": step.input_names, "outputs": step.output_names,
            "frame_format": "uint8 RGB (B, 3, S, S): the centre square of the frame (0.875 of its short side) "
                            "resized to S x S; normalised inside the model",
            "checkpoint": str(checkpoint)}
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    shutil.copy2(EXAMPLE, out / EXAMPLE.name)
    return parity


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m egomodel.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="an egomodel checkpoint (*_best.pt)")
    p.add_argument("--out", required=True, help="folder for model.onnx, model.json, parity.json, the example")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--data", default=None, help="data root of the parity clips (default: the checkpoint's)")
    p.add_argument("--users", nargs="*", default=None, help="users of the parity clips (default: the test users)")
    p.add_argument("--clips", type=int, default=8, help="parity clips (default 8)")
    args = p.parse_args(argv)
    parity = export_checkpoint(args.checkpoint, args.out, args.data, args.users, args.clips)
    print(json.dumps(parity, indent=2))
    print(f"exported: {Path(args.out) / 'model.onnx'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
