"""``python -m egomodel.evaluate --checkpoint FILE --data PATH --out DIR [--users S2 ...]``

Evaluates a checkpoint again on the given users (default: the test users it was trained with)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from egomodel.cli import run_cli
from egomodel.config import from_dict
from egomodel.data import layout
from egomodel.data.dataset import make_loader, resolve_root
from egomodel.model.checkpoint import load_model
from egomodel.reporting.confusion import confusion, plot_confusion, write_per_class
from egomodel.training.engine import make_dataset, uses_flow, uses_mmaps
from egomodel.training.steps import evaluate, pick_device


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m egomodel.evaluate", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="GTEA61 root or 'synthetic'")
    p.add_argument("--out", required=True)
    p.add_argument("--users", nargs="*", default=None, help="users to evaluate (default: the test users)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    model, cfg, classes = load_model(args.checkpoint)
    cfg = from_dict(cfg.to_dict(), {"data.root": args.data, "train.device": args.device})
    users = args.users or cfg.data.test_users
    root = resolve_root(cfg.data.root)
    clips = layout.scan(root, users, need_mmaps=uses_mmaps(cfg), need_flow=uses_flow(cfg), min_frames=cfg.data.frames)
    unknown = sorted({c.label_name for c in clips} - set(classes))
    if unknown:
        raise ValueError(f"classes {unknown} in {root} are not among the checkpoint's {len(classes)} classes")
    device = pick_device(cfg.train.device)
    ds = make_dataset(cfg, clips, classes)
    res = evaluate(model.to(device), make_loader(ds, cfg.train.eval_batch_size, cfg.data.num_workers), cfg, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cm = confusion(res.labels, res.preds, len(classes))
    plot_confusion(cm, classes, out / "confusion.png", f"{'+'.join(users)} top-1 {res.top1:.3f}")
    write_per_class(cm, classes, out / "per_class.csv")
    result = {"checkpoint": args.checkpoint, "users": users, "num_clips": len(clips),
              "top1": res.top1, "loss": res.loss}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


def _entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    _entry()
