"""Classify a video with the exported streaming model, one frame at a time, on ONNX Runtime alone.

    python classify_video.py VIDEO_OR_FRAME_FOLDER [--model model.onnx] [--every-frame] [--threads N]

``python -m egomodel.export`` writes this file beside ``model.onnx`` and ``model.json``; it needs
``onnxruntime``, ``numpy`` and ``opencv-python`` (no torch). The input is a video file OpenCV can read
or a folder of frames (sorted by name). By default it feeds the model the frames it was trained on:
``model.json``'s ``frames`` frames spread over the whole input, as training samples them; with
``--every-frame`` it feeds every frame and prints the running top-1 as a device would. Each frame is
cropped and resized as training does it: the centre square of 0.875 of the short side, resized to
the model's input size with Pillow's bilinear filter (reimplemented here in NumPy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

CENTRE = 0.875


def read_frames(source: Path) -> list[np.ndarray]:
    """Every frame of a video file or an image folder, as RGB uint8 (H, W, 3)."""
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    else:
        cap = cv2.VideoCapture(str(source))
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
        cap.release()
    frames = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames if f is not None]
    if not frames:
        raise SystemExit(f"error: no frames could be read from {source}")
    return frames


def _weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear resampling weights, antialiased when shrinking, as Pillow computes them
    (the data sets' frames are resized with Pillow's BILINEAR in training)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        x = (np.arange(lo, hi) - centre + 0.5) / support
        k = np.clip(1.0 - np.abs(x), 0.0, None)
        w[i, lo:hi] = k / k.sum()
    return w


def prepare(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) RGB -> (1, 3, size, size) uint8: centre square of 0.875 of the short side, resized."""
    h, w = frame.shape[:2]
    side = max(1, int(min(w, h) * CENTRE))
    left, top = (w - side) // 2, (h - side) // 2
    crop = frame[top:top + side, left:left + side].astype(np.float64)
    wts = _weights(side, size)
    rows = np.clip(np.rint(np.einsum("oj,ijc->ioc", wts, crop)), 0, 255)  # horizontal pass, kept as uint8
    out = np.clip(np.rint(np.einsum("oi,ijc->ojc", wts, rows)), 0, 255).astype(np.uint8)  # then vertical
    return np.ascontiguousarray(out.transpose(2, 0, 1)[None])


def sampled(n_frames: int, n: int) -> list[int]:
    """The frames training reads: floor(linspace(1, N, n, endpoint=False)) - 1."""
    return [int(i) for i in np.floor(np.linspace(1, n_frames, n, endpoint=False)).astype(int) - 1]


def classify(model: Path, source: Path, every_frame: bool = False, threads: int = 0) -> np.ndarray:
    meta = json.loads(model.with_name("model.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    state = {name: np.zeros([1, *shapes[name][1:]], np.float32) for name in ("h", "c", "ms_prev") if name in shapes}
    if "first" in shapes:
        state["first"] = np.ones(1, dtype=bool)
    frames = read_frames(source)
    if not every_frame:
        if len(frames) < meta["frames"]:
            raise SystemExit(f"error: {source} has {len(frames)} frames, the model reads {meta['frames']}")
        frames = [frames[i] for i in sampled(len(frames), meta["frames"])]
    probs = None
    for t, frame in enumerate(frames):
        out = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {"frame": prepare(frame, meta["image_size"]), **state})))
        probs, state["h"], state["c"] = out["probs"][0], out["h_out"], out["c_out"]
        if "ms" in out:
            state["ms_prev"], state["first"] = out["ms"], np.zeros(1, dtype=bool)
        if every_frame:
            print(f"frame {t + 1}: {meta['classes'][int(probs.argmax())]} {probs.max():.3f}")
    return probs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="a video file or a folder of frames")
    p.add_argument("--model", type=Path, default=Path(__file__).with_name("model.onnx"))
    p.add_argument("--every-frame", action="store_true", help="feed every frame, print the running top-1")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    args = p.parse_args(argv)
    probs = classify(args.model, args.source, args.every_frame, args.threads)
    classes = json.loads(args.model.with_name("model.json").read_text())["classes"]
    for i in np.argsort(-probs)[:5]:
        print(f"{classes[i]}\t{probs[i]:.4f}")
    print(json.dumps({"top1": classes[int(probs.argmax())], "probs": [float(v) for v in probs]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
