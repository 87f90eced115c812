"""``python -m benchmarks.search_quality --json OUT [--table PATH] [--searches 50]``: search quality for the
compute spent, by replaying recorded learning curves (``benchmarks/replay.py``), with a plot beside OUT (.png).

Recording (once, cached in ``--table``): a 4 x 2 x 2 = 16-configuration grid of the ablation (the stage-2 rate
from 1e-5 to 1e-2, the insertion point and the stage-3 rate in stage 3) on a 1 / 3 / 2-epoch ResNet-18 schedule,
each trained with 4 training seeds on a synthetic set whose validation split is two whole users (``DATA``,
``RECORD_BASE``: the same 104 clips for every seed, one clip under 1 % of top-1), through a local stage store
(shared stage prefixes computed once), by one process per core (spawned: a script that calls :func:`record`
needs an ``if __name__ == "__main__"`` guard). Its wall time is kept in the table and reported.

Replay (one ``ray.init``; ``--jobs`` driver processes, default one per core, connect to it and take the
searches from one queue): random + FIFO, TPE + FIFO, TPE + ASHA as Ray's defaults wire them, train every
configuration to the first rung and continue the best K, ours with stopping and ours with promotion,
``--searches`` searches each, read at 10, 25 and 50 % of B (every grid configuration trained fully, nothing
shared) and along an anytime grid; a search tunes on one seed, its answer is scored by its mean over the other
seeds. The two-objective side: MOASHA (ours) against random + FIFO, top-1 up and GFLOPs (``egomodel.cost``)
down, by hypervolume. The figures: ``benchmarks/replay_report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.machine import output_file
from benchmarks.replay import Table
from benchmarks.replay_report import plot
from benchmarks.replay_run import replay

DEFAULT_TABLE = Path(__file__).resolve().parent / "results" / "search_quality_table.json"
GRID = {
    "train.stage2.lr": [1.0e-5, 1.0e-4, 1.0e-3, 1.0e-2],
    "model.insertion": ["conv1", "layer4"],
    "train.stage3.lr": [1.0e-5, 1.0e-3],
}
SEEDS = (0, 1, 2, 3)
FRACTIONS = [0.1, 0.25, 0.5]
# the recording's synthetic set: 4 classes x 13 clips for each of 5 users (S1 lacks one class); S2 is the test
# user, S3 and S4's 104 clips validate (one clip is under 1 % of top-1), S1 and S5's 91 clips train; every
# training seed is scored on the same clips (a val_fraction split is drawn by train.seed)
DATA = {"classes": 4, "clips_per_class": 13, "frames": 8, "size": (40, 34), "seed": 0, "users": 5}
# on top of the smoke space's settings: 32-pixel crops, the half-size backbone, fp32 on every CPU, two whole
# validation users, and a 1 / 3 / 2-epoch schedule: stage 2 three epochs at its rate, decayed after two, stage 3
# two, decayed after one (the stage-aware rungs fall at global epochs 4 and 5)
RECORD_BASE = {
    "data.image_size": 32, "data.val_users": ["S3", "S4"], "model.backbone": "resnet18", "train.precision": "fp32",
    "train.epochs_scale": 1.0, "train.stage1.epochs": 1, "train.stage1.milestones": [],
    "train.stage2.epochs": 3, "train.stage2.milestones": [2], "train.stage3.epochs": 2, "train.stage3.milestones": [1],
}


def smoke_base() -> dict[str, Any]:
    import yaml

    from benchmarks.replay import SMOKE_BASE_SPACE

    return yaml.safe_load(SMOKE_BASE_SPACE.read_text())["base"]


def record(path: Path, data: Path, seeds: tuple[int, ...] = SEEDS, grid: dict[str, list[Any]] | None = None,
           progress: bool = True, jobs: int | None = None) -> Table:
    """Train every grid configuration with each seed (stage prefixes shared through a stage store) and
    write the table, with the wall time it took, to ``path``. ``jobs`` training processes (default: one per
    core, each with one thread) take configurations in grid order, the seeds interleaved.

    An interrupted recording resumes: the curves recorded so far are kept in ``<path stem>.partial.json``
    after every configuration and the stage store in ``<path stem>_store/`` beside it (both removed once
    the table is written). The store keeps the shared stages only: the last stage is never shared."""
    import multiprocessing

    from tqdm import tqdm

    from egomodel.config import from_dict
    from egomodel.training.stage_keys import first_stage_reading
    from egomodel.training.stages import stage_plan

    grid = grid or GRID
    base = {**smoke_base(), **RECORD_BASE, "data.root": str(data)}
    plan = stage_plan(base["model.variant"], from_dict({}, base).train)
    table = Table(grid, [s.epochs for s in plan], {k: first_stage_reading(k, [s.number for s in plan]) for k in grid},
                  {}, base)
    partial = path.with_name(path.stem + ".partial.json")
    store_dir = path.with_name(path.stem + "_store")
    spent = 0.0
    if partial.exists():
        saved = json.loads(partial.read_text())
        if saved["params"] == grid and _setting(saved["base"]) == _setting(base):
            table.curves.update(saved["curves"])
            spent = saved["record_wall_s"]
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    configs = table.configs()
    order = list(range(len(configs)))
    random.Random(0).shuffle(order)  # a partial table already spans the grid (a pilot reads its seed agreement)
    todo = [(seed, i, configs[i]) for i in order for seed in seeds
            if table.key(configs[i]) not in table.curves.get(str(seed), {})]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
    with tempfile.TemporaryDirectory(prefix="egoquality-", dir=_scratch()) as tmp, \
            multiprocessing.get_context("spawn").Pool(jobs, _worker_init, (str(store_dir.resolve()), tmp, jobs)) \
            as pool, tqdm(total=len(seeds) * len(configs), initial=len(seeds) * len(configs) - len(todo),
                          desc="recording curves", disable=not progress) as bar:
        args = [(base, seed, i, c, plan[-1].number) for seed, i, c in todo]
        for seed, config, curve in pool.imap_unordered(_record_one, args):
            table.curves.setdefault(str(seed), {})[table.key(config)] = curve
            _write(partial, {**table.to_json(), "record_wall_s": spent + time.perf_counter() - started})
            bar.update(1)
    table.gflops.update(gflops(table))
    _write(path, {**table.to_json(), "record_wall_s": spent + time.perf_counter() - started, "record_jobs": jobs,
                  "data": DATA, "recorded": date.today().isoformat()})
    partial.unlink(missing_ok=True)
    shutil.rmtree(store_dir, ignore_errors=True)
    return table


def _setting(base: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k != "data.root"}  # the data set is regenerated in a temporary folder


def _scratch() -> str | None:
    """Where the recording's runs write their checkpoints: memory when the machine has a tmpfs."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class _SharedStagesOnly:
    """The stage store, for every stage but the last one (whose result no other configuration reuses)."""

    def __init__(self, store: Any, last: int) -> None:
        self.store, self.last = store, last

    def get_or_claim(self, key: str, owner: str) -> Path | None:
        return self.store.get_or_claim(key, owner)

    def put(self, key: str, payload: dict[str, Any]) -> None:
        if payload["rows"] and payload["rows"][0]["stage"] == self.last:
            self.store.release(key)
            shutil.rmtree(Path(self.store.root) / key, ignore_errors=True)  # its lease file
        else:
            self.store.put(key, payload)

    def release(self, key: str) -> None:
        self.store.release(key)


_WORKER: dict[str, Any] = {}


def _worker_init(store_dir: str, tmp: str, jobs: int) -> None:
    import torch

    from tuning.execution.stage_store import StageStore

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    # one machine, processes that never crash silently: no settle time, short polls, no chatter
    _WORKER.update(store=StageStore(store_dir, poll_seconds=0.2, log=lambda *a: None), tmp=tmp)


def _record_one(args: tuple[dict[str, Any], int, int, dict[str, Any], int]) -> tuple[int, dict[str, Any], list[float]]:
    """One configuration and seed trained (in a recording process): its validation top-1 after every epoch."""
    import contextlib

    from egomodel.config import from_dict
    from egomodel.training.engine import train

    base, seed, i, config, stages = args
    out_dir = Path(_WORKER["tmp"]) / f"run{seed}-{i}"
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the engine's per-epoch lines
            out = train(from_dict({}, {**base, **config, "train.seed": seed}), out_dir, evaluate_test=False,
                        progress=False, store=_SharedStagesOnly(_WORKER["store"], stages), owner=f"record {seed}-{i}")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    rows = sorted(out["history"], key=lambda h: h["global_epoch"])
    return seed, config, [float(h["val_top1"]) for h in rows]


def _write(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def gflops(table: Table) -> dict[str, float]:
    """Each configuration's inference GFLOPs per clip (``egomodel.cost``; only the insertion point moves them
    in this grid), for the two-objective replay."""
    from egomodel.config import from_dict
    from egomodel.cost import count

    return {table.key(c): count(from_dict({}, {**table.base, **c}), DATA["classes"]).gflops for c in table.configs()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="where to write the figures (the plot goes beside it, .png)")
    p.add_argument("--table", default=str(DEFAULT_TABLE), help="the recorded curves (recorded here if missing)")
    p.add_argument("--searches", type=int, default=50, help="searches per strategy (at least 1)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="searches replayed at once, each by its own driver process (default: one per core)")
    args = p.parse_args(argv)
    if args.searches < 1:
        p.error(f"--searches must be at least 1, got {args.searches}")
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    path = output_file(p, args.json)
    output_file(p, args.table)  # a recording writes its partial curves beside the table as it goes
    out = measure(Path(args.table), args.searches, jobs=args.jobs)
    path.write_text(json.dumps(out, indent=1))
    plot(out, path.with_suffix(".png"))
    for s, by in out["regret"].items():
        print(f"{s:<18}" + "  ".join(f"{f}: median {v['median']:.3f} IQM {v['iqm']:.3f}" for f, v in by.items()))
    print({k: out.get(k) for k in VERDICTS})
    return 0


VERDICTS = ("table_seed_spearman", "budget_to_match_tpe_fifo", "beats_default_asha_at_all_budgets",
            "budget_to_match_tpe_fifo_promotion", "beats_default_asha_at_all_budgets_promotion",
            "moasha_hypervolume_ratio_at_25", "record_wall_s", "replay_wall_s")


def measure(table_path: Path, searches: int, progress: bool = True, jobs: int = 1) -> dict[str, Any]:
    """Record (or reuse) the table, then replay every strategy on one Ray started here (one ``ray.init``),
    ``jobs`` searches at once."""
    import ray

    from benchmarks.machine import machine

    if table_path.exists():
        saved = json.loads(table_path.read_text())
        cached = True
    else:
        from egomodel.data.synthetic import generate

        with tempfile.TemporaryDirectory(prefix="egoquality-data-") as d:
            record(table_path, generate(Path(d) / "set", **DATA), progress=progress)
        saved, cached = json.loads(table_path.read_text()), False
    table = Table.from_json(saved)
    if not table.gflops:
        table.gflops.update(gflops(table))
    started = time.perf_counter()
    ray.init(address="local", num_cpus=jobs, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="egoquality-replay-") as work:
            out = replay(table, searches, FRACTIONS, Path(work), progress, jobs=jobs)
    finally:
        ray.shutdown()
    return {"machine": machine(), "date": date.today().isoformat(), "configurations": len(table.configs()),
            "training_seeds": len(table.seeds()), "table_seed_spearman": table.seed_spearman(),
            "record_wall_s": saved.get("record_wall_s"), "record_jobs": saved.get("record_jobs"),
            "recorded": saved.get("recorded"), "record_cached": cached,
            "replay_wall_s": time.perf_counter() - started, **out}


if __name__ == "__main__":
    sys.exit(main())
