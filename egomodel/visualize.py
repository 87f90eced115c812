"""``python -m egomodel.visualize --checkpoint FILE --out DIR [--data ROOT] [--split val] [--metrics FILE]``

Draws a checkpoint's pictures as PNG files (:func:`egomodel.reporting.pictures.model_plots`): training
curves, CAM overlays on a few clips of the split, and for a feedback model the β/γ maps of one clip.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from egomodel.cli import run_cli
from egomodel.reporting.pictures import model_plots


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m egomodel.visualize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=None, help="data root (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--metrics", default=None, help="metrics.json whose history to plot")
    args = p.parse_args(argv)
    history = json.loads(Path(args.metrics).read_text()).get("history") if args.metrics else None
    for f in model_plots(args.checkpoint, args.out, history, args.data, args.split, args.clips):
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
