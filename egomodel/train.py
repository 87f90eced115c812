"""``python -m egomodel.train --data PATH --out DIR [--config FILE] [--set key=value ...] [--resume]``"""

from __future__ import annotations

import argparse
import json
import sys

from egomodel.cli import run_cli
from egomodel.config import load_config, parse_overrides
from egomodel.training.engine import train


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m egomodel.train", description=__doc__)
    p.add_argument("--data", default=None, help="GTEA61 root, or 'synthetic' (generated once, cached)")
    p.add_argument("--out", required=True, help="output folder: config, metrics, checkpoints, plots")
    p.add_argument("--config", default=None, help="YAML file with config overrides")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides, e.g. model.alpha=0.5")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = parse_overrides(args.set)
    if args.data is not None:
        overrides["data.root"] = args.data
    cfg = load_config(args.config, overrides)
    metrics = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    summary = {k: metrics[k] for k in ("val_top1", "test_top1", "num_train_clips", "num_val_clips", "num_test_clips")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/metrics.json, confusion_test.png, per_class_test.csv, checkpoints/")
    return 0


def _entry() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    _entry()
