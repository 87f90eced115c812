"""``python -m benchmarks.search_quality --json OUT [--table PATH] [--seeds 30]``: search quality for the
compute spent, by replaying recorded learning curves (``benchmarks/replay.py``).

Recording (once, cached in ``--table``): a 4 x 2 x 4 x 2 = 64-configuration grid of the ablation at smoke
scale (alpha and the stage-2 rate act from stage 2, the insertion point and the stage-3 rate in stage 3)
on the synthetic set, each trained with 2 training seeds through a local stage store (shared stage
prefixes computed once). Its wall time is reported. Replay: random + FIFO, TPE + FIFO, TPE + ASHA as
Ray's defaults wire them, and ours, ``--seeds`` searches each at 10, 25 and 50 % of B (every grid
configuration trained fully, nothing shared); simple regret on the seed not tuned on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.replay import Table, replay

DEFAULT_TABLE = Path(__file__).resolve().parent / "results" / "search_quality_table.json"
GRID = {
    "model.alpha": [0.5, 1.0, 2.0, 4.0],
    "train.stage2.lr": [1.0e-4, 1.0e-3],
    "model.insertion": ["conv1", "layer1", "layer2", "layer4"],
    "train.stage3.lr": [1.0e-4, 1.0e-3],
}
FRACTIONS = [0.1, 0.25, 0.5]


def smoke_base() -> dict[str, Any]:
    import yaml

    from benchmarks.replay import SMOKE_BASE_SPACE

    return yaml.safe_load(SMOKE_BASE_SPACE.read_text())["base"]


def record(path: Path, data: Path, seeds: tuple[int, ...] = (0, 1), grid: dict[str, list[Any]] | None = None,
           progress: bool = True) -> Table:
    """Train every grid configuration with each seed (stage prefixes shared through a stage store) and
    write the table, with the wall time it took, to ``path``.

    An interrupted recording resumes: the curves recorded so far are kept in ``<path stem>.partial.json``
    after every configuration and the stage store in ``<path stem>_store/`` beside it (both removed once
    the table is written)."""
    import shutil

    from tqdm import tqdm

    from egomodel.config import from_dict
    from egomodel.training.engine import train
    from egomodel.training.stage_keys import first_stage_reading
    from egomodel.training.stages import stage_plan
    from tuning.execution.stage_store import StageStore

    grid = grid or GRID
    base = {**smoke_base(), "data.root": str(data)}
    plan = stage_plan(base["model.variant"], from_dict({}, base).train)
    table = Table(grid, [s.epochs for s in plan], {k: first_stage_reading(k, [s.number for s in plan]) for k in grid},
                  {}, base)
    partial = path.with_name(path.stem + ".partial.json")
    store_dir = path.with_name(path.stem + "_store")
    spent = 0.0
    if partial.exists():
        saved = json.loads(partial.read_text())
        if saved["params"] == grid:
            table.curves.update(saved["curves"])
            spent = saved["record_wall_s"]
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    store = StageStore(str(store_dir.resolve()))
    configs = table.configs()
    todo = [(seed, i, c) for seed in seeds for i, c in enumerate(configs)
            if table.key(c) not in table.curves.get(str(seed), {})]
    with tempfile.TemporaryDirectory(prefix="egoquality-") as tmp, \
            tqdm(total=len(seeds) * len(configs), initial=len(seeds) * len(configs) - len(todo),
                 desc="recording curves", disable=not progress) as bar:
        for seed, i, config in todo:
            cfg = from_dict({}, {**base, **config, "train.seed": seed})
            out = train(cfg, Path(tmp) / f"run{seed}-{i}", evaluate_test=False, progress=False, store=store,
                        owner=f"record {seed}-{i}")
            shutil.rmtree(Path(tmp) / f"run{seed}-{i}", ignore_errors=True)
            rows = sorted(out["history"], key=lambda h: h["global_epoch"])
            table.curves.setdefault(str(seed), {})[table.key(config)] = [float(h["val_top1"]) for h in rows]
            _write(partial, {**table.to_json(), "record_wall_s": spent + time.perf_counter() - started})
            bar.update(1)
    _write(path, {**table.to_json(), "record_wall_s": spent + time.perf_counter() - started,
                  "recorded": date.today().isoformat()})
    partial.unlink(missing_ok=True)
    shutil.rmtree(store_dir, ignore_errors=True)
    return table


def _write(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="where to write the figures")
    p.add_argument("--table", default=str(DEFAULT_TABLE), help="the recorded curves (recorded here if missing)")
    p.add_argument("--seeds", type=int, default=30, help="searches per strategy")
    args = p.parse_args(argv)
    out = measure(Path(args.table), args.seeds)
    Path(args.json).write_text(json.dumps(out, indent=2))
    for s, by in out["table"].items():
        print(f"{s:<18}" + "  ".join(f"{f}: {v['median']:.3f} [{v['iqr'][0]:.3f}, {v['iqr'][1]:.3f}]"
                                      for f, v in by.items()))
    print(f"budget_to_match_tpe_fifo {out['budget_to_match_tpe_fifo']}  "
          f"beats_default_asha_at_all_budgets {out['beats_default_asha_at_all_budgets']}")
    return 0


def measure(table_path: Path, seeds: int, progress: bool = True) -> dict[str, Any]:
    """Record (or reuse) the table, then replay every strategy under one ``ray.init``."""
    import ray

    from benchmarks.machine import machine

    if table_path.exists():
        saved = json.loads(table_path.read_text())
        table, record_s, cached = Table.from_json(saved), saved.get("record_wall_s"), True
    else:
        from egomodel.data.synthetic import generate

        with tempfile.TemporaryDirectory(prefix="egoquality-data-") as d:
            data = generate(Path(d), classes=4, clips_per_class=3, frames=8, size=(48, 40), seed=0)
            table = record(table_path, data, progress=progress)
        record_s, cached = json.loads(table_path.read_text())["record_wall_s"], False
    started = time.perf_counter()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="egoquality-replay-") as work:
            out = replay(table, seeds, FRACTIONS, Path(work), progress)
    finally:
        ray.shutdown()
    return {"machine": machine(), "date": date.today().isoformat(), "configurations": len(table.configs()),
            "record_wall_s": record_s, "record_cached": cached, "replay_wall_s": time.perf_counter() - started,
            **out}


if __name__ == "__main__":
    sys.exit(main())
