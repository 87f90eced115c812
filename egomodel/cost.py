"""What a model costs to run on one clip at inference: forward FLOPs and parameters.

A wearable pays for every frame it classifies, so the multi-objective search (``tuning``, the
``wearable`` space) minimises this next to maximising accuracy. FLOPs are counted, not estimated:
the variant's network is built on PyTorch's meta device (shapes, no weights) and run once in eval mode on
a clip under
``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix products and convolutions
(2 FLOPs per multiply-add; element-wise operations such as ReLU, BatchNorm in eval and the ConvLSTM's
gate arithmetic are not counted, as is usual). What one clip is:

- RGB variants (``convlstm``, ``attention``, ``ms``, ``feedback``): ``data.frames`` frames of
  ``data.image_size`` pixels; ``feedback`` with its branch on (frame by frame, as at test time); the MS
  head of ``ms`` and ``feedback`` is counted, since the feedback branch reads it and it runs anyway.
- ``flow``: ``data.flow_segments`` stacks of ``2 * data.flow_stack`` flow planes (the evaluation input).
- ``two_stream``: both, the attention stream over the frames and the flow stream over the stacks. The
  optical flow itself (computed before the network) is not in the FLOPs.

The count depends only on the fields of :data:`COST_KEYS`; results are kept in a JSON file
(``$EGOMODEL_CACHE/cost.json``, else ``~/.cache/egomodel/cost.json``) keyed by them, so each
configuration is counted once per machine.

``python -m egomodel.cost --set model.variant=attention data.frames=5`` prints one configuration's cost.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from egomodel.config import Config, from_dict

# the config fields the inference cost depends on (the architecture and the input's size)
COST_KEYS = ("model.variant", "model.backbone", "model.hidden", "model.ms_task", "model.insertion",
             "model.feedback_channels", "data.frames", "data.image_size", "data.flow_stack", "data.flow_segments")
GTEA61_CLASSES = 61  # the classifier's outputs; its FLOPs are a negligible part of a clip's (< 0.01 %)
CACHE_NAME = "cost.json"


@dataclasses.dataclass(frozen=True)
class Cost:
    gflops: float  # forward GFLOPs per clip (1e9 FLOPs, 2 per multiply-add)
    params_m: float  # parameters of the inference network, millions

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def cost_key(cfg: Config, num_classes: int = GTEA61_CLASSES) -> str:
    """The cache key of a configuration: its :data:`COST_KEYS` values and the class count."""
    values = {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in COST_KEYS}
    return json.dumps({**values, "classes": num_classes}, sort_keys=True)


def count(cfg: Config, num_classes: int = GTEA61_CLASSES) -> Cost:
    """Count the cost of one clip now (no cache): build the variant's network and run it once."""
    from torch.utils.flop_counter import FlopCounterMode

    from egomodel.model import build_model

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained="none", rgb_checkpoint="",
                                                             flow_checkpoint=""))
    # on the meta device: shapes only, no weights and no arithmetic (the counter reads shapes)
    with torch.device("meta"):
        model = build_model(cfg, num_classes).eval()
    d, variant = cfg.data, cfg.model.variant
    if variant == "feedback":  # the branch runs at test time; a flag read on the host
        model.feedback_on = torch.ones((), dtype=torch.bool)
    frames = torch.zeros(1, d.frames, 3, d.image_size, d.image_size, device="meta")
    flow = torch.zeros(1, d.flow_segments, 2 * d.flow_stack, d.image_size, d.image_size, device="meta")
    inputs = {"flow": (flow,), "two_stream": (frames, flow)}.get(variant, (frames,))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    params = sum(p.numel() for p in model.parameters())
    return Cost(gflops=counter.get_total_flops() / 1e9, params_m=params / 1e6)


def cache_file() -> Path:
    from egomodel.data.packed import cache_base

    return cache_base() / CACHE_NAME


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def clip_cost(cfg: Config, num_classes: int = GTEA61_CLASSES, cache: Path | None = None) -> Cost:
    """The cost of one clip of ``cfg``, from the cache when it was counted before (``cache``: a JSON
    file, default :func:`cache_file`); a new count is added to the file (written whole, atomically)."""
    path = cache or cache_file()
    key = cost_key(cfg, num_classes)
    hit = _read(path).get(key)
    if isinstance(hit, dict) and set(hit) == {"gflops", "params_m"}:
        return Cost(**hit)
    cost = count(cfg, num_classes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = {**_read(path), key: cost.as_dict()}  # read again: another process may have added one
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cost-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache costs a recount next time, nothing else
        print(f"warning: could not write the cost cache {path}: {e}", file=sys.stderr)
    return cost


def main(argv: list[str] | None = None) -> int:
    import argparse

    from egomodel.config import parse_overrides

    p = argparse.ArgumentParser(prog="python -m egomodel.cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--classes", type=int, default=GTEA61_CLASSES, help="classifier outputs (default 61)")
    args = p.parse_args(argv)
    cfg = from_dict({}, parse_overrides(args.set))
    cost = clip_cost(cfg, args.classes)
    d = cfg.data
    print(f"{cfg.model.variant}, {d.frames} frames at {d.image_size} px: {cost.gflops:.2f} GFLOPs per clip, "
          f"{cost.params_m:.2f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
