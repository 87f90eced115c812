"""The device-cost figures of docs/benchmarks.md, run by hand: ``python -m benchmarks.export [--reps N] [--out FILE]``.

For ``attention``, ``ms`` and ``feedback`` at the paper's size (224 px) with each backbone (ResNet-34,
ResNet-18), random weights: the streaming step exported to ONNX as ``python -m egomodel.export`` does it,
and its per-frame latency in ONNX Runtime on this machine's CPU (batch 1, median of ``--reps`` runs after a
warm-up) with one thread and with all threads (:func:`egomodel.export.step_latency`); beside it the
forward FLOPs and parameters from :mod:`egomodel.cost` (per clip at the default ``data.frames``, and per
frame). ``flow`` and ``two_stream`` are not exported (no streaming step: they read optical flow): their
FLOPs and parameters are listed with the optical-flow time per frame measured by ``python -m
benchmarks.prepare`` (``benchmarks/results/prepare.json``), the device's cost of computing their input.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import date
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.machine import machine, output_file
from egomodel.config import from_dict
from egomodel.cost import GTEA61_CLASSES, count
from egomodel.export import export_onnx, step_latency
from egomodel.model import build_model
from egomodel.model.streaming import StreamingStep

STREAMED = ("attention", "ms", "feedback")
NOT_STREAMED = ("flow", "two_stream")
BACKBONES = ("resnet34", "resnet18")
PREPARE = Path("benchmarks/results/prepare.json")


def _cfg(variant: str, backbone: str):  # noqa: ANN202 - a Config
    return from_dict({}, {"model.variant": variant, "model.backbone": backbone, "model.pretrained": "none",
                          "data.image_size": 224})


def _cost(cfg, per_frame: bool = True) -> dict[str, float]:  # noqa: ANN001
    """FLOPs per clip at the default data.frames (and, for the streamed RGB variants, per frame)."""
    cost = {**count(cfg, GTEA61_CLASSES).as_dict(), "frames": cfg.data.frames}
    return {**cost, "gflops_per_frame": cost["gflops"] / cfg.data.frames} if per_frame else cost


def streamed(reps: int, work: Path) -> dict[str, dict[str, float]]:
    out = {}
    for variant, backbone in tqdm([(v, b) for b in BACKBONES for v in STREAMED], desc="export + latency"):
        cfg = _cfg(variant, backbone)
        torch.manual_seed(0)
        model = build_model(cfg, GTEA61_CLASSES).eval()
        model.feedback_on.fill_(variant == "feedback")  # the branch on, as after stage 3
        step = StreamingStep(model)
        path = export_onnx(step, work / f"{variant}-{backbone}.onnx")
        out[f"{variant} {backbone}"] = {
            **_cost(cfg), "onnx_mb": path.stat().st_size / 1e6,
            "ms_per_frame_1_thread": 1e3 * step_latency(path, step, 1, reps),
            "ms_per_frame_all_threads": 1e3 * step_latency(path, step, 0, reps)}
        path.unlink()
    return out


def not_streamed() -> dict[str, object]:
    fps = json.loads(PREPARE.read_text())["frames_per_s_one_core"] if PREPARE.is_file() else {}
    flow_ms = {f"{k} (one core)": 1e3 / v for k, v in fps.items()}
    costs = {f"{v} {b}": _cost(_cfg(v, b), per_frame=False) for b in BACKBONES for v in NOT_STREAMED}
    return {"export": "none: flow and two_stream have no streaming step (their input is optical flow between "
                      "frames); egomodel.export refuses them", "cost": costs,
            "optical_flow_ms_per_frame": flow_ms, "optical_flow_from": str(PREPARE)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20, help="timed runs per figure (median; default 20)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export.json"))
    args = parser.parse_args()
    output_file(parser, args.out)
    result = {"date": date.today().isoformat(), "machine": machine(), "threads_all": torch.get_num_threads(),
              "reps": args.reps, "image_size": 224, "load_average_before": os.getloadavg(),
              "note": "the load averages (1, 5, 15 min) before and after: a loaded machine gives slower figures"}
    with tempfile.TemporaryDirectory() as tmp:
        result["streamed"] = streamed(args.reps, Path(tmp))
    result["not_streamed"] = not_streamed()
    result["load_average_after"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
