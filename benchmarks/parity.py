"""``python -m benchmarks.parity [--seeds 0 1]``: bf16 autocast vs fp32 accuracy on the synthetic task.

Runs the learning test's three-stage ``feedback`` setting (tests/test_learning.py: 8 classes, random
weights) once per seed and precision, and prints validation and test top-1 side by side. By hand;
about 30 s per run on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from egomodel.config import from_dict
from egomodel.data.synthetic import generate
from egomodel.training.engine import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_learning import DATA, OVERRIDES  # noqa: E402 - the learning test's setting, one source


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.parity", description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="egoparity-"))
    root = generate(tmp / "data", **DATA)
    print(f"{'seed':>4} {'precision':>9} {'val top-1':>9} {'test top-1':>10} {'s':>5}")
    for seed in args.seeds:
        for precision in ("fp32", "bf16"):
            cfg = from_dict({}, {**OVERRIDES, "data.root": str(root), "train.precision": precision,
                                 "train.seed": seed})
            t0 = time.perf_counter()
            m = train(cfg, tmp / f"{precision}{seed}", progress=False)
            print(f"{seed:>4} {precision:>9} {m['val_top1']:>9.3f} {m['test_top1']:>10.3f} "
                  f"{time.perf_counter() - t0:>5.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
