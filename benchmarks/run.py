"""``python -m benchmarks.run [--quick] --json OUT.json``: every figure measured side by side in one run.

Keys (each a ratio; medians of at least 3 repetitions where a repetition is cheap enough to repeat):
``search_cost_ratio``, ``stage1_cache_speedup``,
``step_speedup_vs_naive``, ``data_wait_fraction``, ``tune_overhead_ratio``, ``two_node_speedup``; and
``search_quality`` (``benchmarks.search_quality``: regret per strategy and budget, by replayed curves).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.machine import machine, output_file
from benchmarks.sessions import kill_session
from benchmarks.step import time_steps

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "model.variant": "feedback", "model.pretrained": "none", "model.hidden": 32, "data.image_size": 64,
    "data.frames": 3, "data.num_workers": 0, "train.epochs_scale": 0.01, "train.stage1.batch_size": 8,
    "train.stage2.batch_size": 8, "train.stage3.batch_size": 8, "train.eval_batch_size": 32,
    "data.decoded_cache": 4096, "train.stage1_views": 2,  # as smoke.yaml
}
# ablation-style at smoke scale: nothing touches stage 1; stage 2 has a few discrete settings
ABLATION_PARAMS = {
    "model.alpha": {"type": "categorical", "choices": [0.5, 1.0, 2.0]},
    "model.insertion": {"type": "categorical", "choices": ["conv1", "layer1", "layer2", "layer3", "layer4"]},
    "train.stage3.lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True},
}


def _space(tmp: Path, name: str, params: dict[str, Any], n: int, conc: int, **extra: Any) -> Path:
    spec = {"name": name, "metric": "val_top1", "mode": "max", "num_samples": n, "max_concurrent": conc,
            "seed": 0, "resources": {"cpu": 1, "gpu": 0}, "scheduler": {"type": "fifo"}, "base": BASE,
            "params": params, **extra}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _search(tmp: Path, space: Path, data: Path, *extra: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "RAY_AUTH_MODE": "disabled"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuning.search", "--space", str(space), "--data", str(data),
                           *extra], cwd=tmp, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"search failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def trial_rows(exp_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for f in exp_dir.glob("*/result.json"):
        out[f.parent.name] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def _executed_epochs(rows: list[dict[str, Any]]) -> int:
    return len({r["global_epoch"] for r in rows if not r.get("from_store")})


def _best_config(rows: dict[str, list[dict[str, Any]]]) -> tuple[Any, float]:
    finals = [(r[-1]["val_top1"], json.dumps(r[-1]["config"], sort_keys=True)) for r in rows.values()
              if r and r[-1].get("final")]
    top = max(finals)
    return top[1], top[0]


def search_cost(tmp: Path, data: Path, trials: int) -> dict[str, Any]:
    """Stage-epochs executed by one ablation-style search with the stage store and one without."""
    space = _space(tmp, "cost", ABLATION_PARAMS, trials, 2)
    runs = {}
    for label, extra in (("store", []), ("naive", ["--no-stage-store"])):
        work = tmp / label
        work.mkdir()
        wall = _search(work, space, data, *extra)
        runs[label] = (trial_rows(work / "ray_results" / "cost"), wall)
    return cost_figures(runs["store"], runs["naive"])


def cost_figures(store: tuple[dict[str, list[dict[str, Any]]], float],
                 naive: tuple[dict[str, list[dict[str, Any]]], float]) -> dict[str, Any]:
    """The search-cost figures from two searches' Ray results (``trial_rows``) and wall times."""
    results = {}
    for label, (rows, wall) in (("store", store), ("naive", naive)):
        waits = [r[-1].get("mean_data_wait_fraction") for r in rows.values() if r and r[-1].get("final")]
        results[label] = {"epochs": sum(_executed_epochs(r) for r in rows.values()), "wall_s": wall,
                          "best": _best_config(rows), "data_wait": statistics.mean(w for w in waits if w is not None)}
    s, n = results["store"], results["naive"]
    return {"search_cost_ratio": s["epochs"] / n["epochs"], "stage_epochs_with_store": s["epochs"],
            "stage_epochs_without_store": n["epochs"], "search_wall_ratio": s["wall_s"] / n["wall_s"],
            "same_best_configuration": s["best"][0] == n["best"][0],
            "data_wait_fraction": s["data_wait"]}


def trial_seconds(rows: dict[str, list[dict[str, Any]]]) -> list[float]:
    """Each finished trial's time: the larger of Ray's time_total_s and the trial's own wall clock
    (trial_wall_s: from the trial function's first line to its final report, pictures and checkpoint
    hand-over included)."""
    return [max(r[-1]["time_total_s"], r[-1]["trial_wall_s"]) for r in rows.values() if r and r[-1].get("final")]


def tune_overhead(tmp: Path, data: Path, reps: int) -> dict[str, Any]:
    """A smoke trial's time under Ray Tune (its own time_total_s) vs the same engine.train directly;
    also under Tune with the space's ``plots: false`` (the trial's pictures are its largest fixed cost)."""
    point = {"model.alpha": 1.0}
    tuned_by = {}
    for plots in (True, False):
        name = "overhead" if plots else "overhead_noplots"
        space = _space(tmp, name, {"model.alpha": {"type": "categorical", "choices": [1.0]}}, reps, 1,
                       points=[point] * reps, plots=plots)
        work = tmp / name
        work.mkdir()
        _search(work, space, data, "--no-stage-store")
        tuned_by[plots] = trial_seconds(trial_rows(work / "ray_results" / name))
    # each direct run in a fresh process with one thread, as each trial gets a fresh 1-CPU Ray worker:
    # an in-process run after the other benchmarks would start with warm caches the trial never has
    direct = [direct_train(data, work / f"direct{i}") for i in range(reps)]
    return overhead_figures(tuned_by[True], tuned_by[False], direct)


def overhead_figures(tuned: list[float], tuned_without_plots: list[float], direct: list[float]) -> dict[str, Any]:
    """Trial seconds under Tune (with and without the trial's pictures) against direct training."""
    return {"tune_overhead_ratio": statistics.median(tuned) / statistics.median(direct),
            "tune_overhead_ratio_without_plots": statistics.median(tuned_without_plots) / statistics.median(direct),
            "trial_s_under_tune": statistics.median(tuned), "trial_s_direct": statistics.median(direct)}


DIRECT = """
import json, sys, time
import torch
torch.set_num_threads(1)
from egomodel.config import from_dict
from egomodel.training.engine import train
cfg = from_dict({}, json.loads(sys.argv[1]))
t0 = time.perf_counter()
train(cfg, sys.argv[2], evaluate_test=False, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def direct_train(data: Path, out: Path) -> float:
    """Seconds of ``egomodel.training.engine.train`` on the overhead trial's config, in a fresh one-thread
    process (imports not counted, as a trial's time_total_s does not count its worker's)."""
    overrides = json.dumps({**BASE, "model.alpha": 1.0, "data.root": str(data)})
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", DIRECT, overrides, str(out)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"direct training failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]


def stage1_cache(data: Path, size: int, frames: int, reps: int) -> dict[str, Any]:
    """One stage-1 epoch on decoded clips vs on cached features (same model, data, batch size)."""
    import torch

    from egomodel.config import from_dict
    from egomodel.data.dataset import ClipDataset, load_bundle, make_loader
    from egomodel.model import EgoRNN
    from egomodel.training.feature_cache import FeatureCache, train_cached_epoch
    from egomodel.training.stages import apply_stage
    from egomodel.training.steps import train_epoch

    cfg = from_dict({}, {"data.root": str(data), "data.image_size": size, "data.frames": frames,
                         "model.variant": "attention", "model.pretrained": "none", "data.num_workers": 0})
    bundle = load_bundle(cfg.data, 0, need_mmaps=False)
    ds = ClipDataset(bundle.train, bundle.classes, cfg.data, 0)
    model = EgoRNN(cfg.model, len(bundle.classes), size).to(memory_format=torch.channels_last)
    apply_stage(model, ["convlstm", "classifier"])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    cpu = torch.device("cpu")
    uncached, cached = [], []
    t0 = time.perf_counter()
    cache = FeatureCache(model, ds, 1, cpu, progress=False)
    build = time.perf_counter() - t0
    for epoch in range(1, reps + 1):
        t0 = time.perf_counter()
        train_epoch(model, make_loader(ds, 8, 0, epoch_key=epoch), opt, cfg, cpu, progress=False, ms_on=False)
        uncached.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        train_cached_epoch(model, cache, opt, 8, epoch, cpu, cfg.train.precision)
        cached.append(time.perf_counter() - t0)
    return {"stage1_cache_speedup": statistics.median(uncached) / statistics.median(cached),
            "stage1_epoch_s_uncached": statistics.median(uncached), "stage1_epoch_s_cached": statistics.median(cached),
            "stage1_cache_build_s_per_view": build}


def _ray(*args: str) -> int:
    """``ray start ...`` in a session of its own, whose id is returned: its daemons keep it, so
    ``kill_session`` ends these nodes and no other Ray on the machine (``ray stop`` would end all)."""
    # Ray 2.60 nodes started by hand must agree on token auth; these local ones use none
    # and trials at normal priority, as cluster.yaml starts its nodes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": "0"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ray"), *args], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        kill_session(proc.pid)
        raise RuntimeError(f"ray {' '.join(args)} failed:\n{out[-2000:]}")
    return proc.pid


def two_nodes(tmp: Path, data: Path, trials: int, reps: int) -> dict[str, Any]:
    """Trials per hour on one Ray node (1 CPU) and on two nodes of this machine (1 CPU each); the median
    over ``reps`` fresh clusters of the per-repetition ratio."""
    from ray.util import get_node_ip_address

    space = _space(tmp, "nodes", {"model.alpha": {"type": "float", "low": 0.5, "high": 2.0}}, trials, trials)
    port = "6391"
    head = f"{get_node_ip_address()}:{port}"
    ratios, whole, rates1, rates2, trial_s = [], [], [], [], {1: [], 2: []}
    for rep in range(reps):
        rates, walls, sessions = {}, {}, []
        try:
            sessions.append(_ray("start", "--head", "--num-cpus", "1", "--port", port, "--include-dashboard", "false"))
            for nodes in (1, 2):
                if nodes == 2:
                    sessions.append(_ray("start", "--address", head, "--num-cpus", "1"))
                work = tmp / f"nodes{nodes}_{rep}"
                work.mkdir()
                wall = _search(work, space, data, "--address", head, "--no-stage-store",
                               "--storage", f"file://{work / 'ray_results'}")
                rows = trial_rows(work / "ray_results" / "nodes")
                rates[nodes] = trials / _trial_span(rows) * 3600
                trial_s[nodes] += [r[-1]["time_total_s"] for r in rows.values() if r]
                walls[nodes] = trials / wall * 3600
        finally:
            for sid in sessions:
                kill_session(sid)
        ratios.append(rates[2] / rates[1])
        whole.append(walls[2] / walls[1])
        rates1.append(rates[1])
        rates2.append(rates[2])
    return {"two_node_speedup": statistics.median(ratios), "two_node_speedup_each": ratios,
            "trials_per_hour_1_node": statistics.median(rates1), "trials_per_hour_2_nodes": statistics.median(rates2),
            "two_node_speedup_whole_command": statistics.median(whole),
            # a trial's own run time alone on a node vs beside another trial on this machine's other core
            "trial_s_1_node": statistics.median(trial_s[1]), "trial_s_2_nodes": statistics.median(trial_s[2])}


def _trial_span(rows: dict[str, list[dict[str, Any]]]) -> float:
    """Seconds from the first trial's start to the last trial's end (the search's steady state,
    without the driver's fixed start-up and wrap-up, which a long search pays once)."""
    starts = [r[0]["timestamp"] - r[0]["time_total_s"] for r in rows.values() if r]
    ends = [r[-1]["timestamp"] for r in rows.values() if r]
    return max(ends) - min(starts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller searches; finishes in minutes")
    p.add_argument("--tiny", action="store_true", help="CI: check that every benchmark runs, not its figures")
    p.add_argument("--json", required=True, help="where to write the figures")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["step", "cache", "search", "overhead", "nodes", "quality"])
    args = p.parse_args(argv)
    path = output_file(p, args.json)
    from egomodel.data.synthetic import generate

    tmp = Path(tempfile.mkdtemp(prefix="egobench-"))
    # 8 frames: enough for the 7 sampled at full scale (tiny mode samples 3)
    data = generate(tmp / "data", classes=4, clips_per_class=3, frames=8, size=(48, 40), seed=0)
    reps = 1 if args.tiny else 3
    out: dict[str, Any] = {"machine": machine(), "mode": "tiny" if args.tiny else "quick" if args.quick else "full"}
    if "step" not in args.skip:
        shape = (1, 2, 64) if args.tiny else (4, 7, 224)
        from egomodel.training.steps import cpu_has_bf16

        precision = "bf16" if cpu_has_bf16() else "fp32"  # what train.precision=auto picks on this CPU
        naive = time_steps(True, *shape, reps)
        ours = time_steps(False, *shape, reps, precision=precision, channels_last=True)
        out.update(step_speedup_vs_naive=naive / ours, naive_step_s=naive, our_step_s=ours, step_shape=list(shape),
                   our_step_precision=precision)
    if "cache" not in args.skip:
        out.update(stage1_cache(data, 64 if args.tiny else 224, 3 if args.tiny else 7, reps))
    if "search" not in args.skip:
        out.update(search_cost(tmp, data, 2 if args.tiny else 8 if args.quick else 16))
    if "overhead" not in args.skip:
        out.update(tune_overhead(tmp, data, reps))
    if "nodes" not in args.skip:
        # three fresh clusters per figure: quick with 2 trials per cluster size, full with 6
        out.update(two_nodes(tmp, data, 1 if args.tiny else 2 if args.quick else 6, 1 if args.tiny else 3))
    if "quality" not in args.skip and not args.tiny:  # tiny: tests/test_search_quality.py replays a tiny table
        from benchmarks.search_quality import DEFAULT_TABLE, measure

        out["search_quality"] = measure(DEFAULT_TABLE, 30, progress=False)
    path.write_text(json.dumps(out, indent=2))
    width = max(len(k) for k in out)
    for k, v in out.items():
        if k == "search_quality":
            v = {x: v[x] for x in ("budget_to_match_tpe_fifo", "beats_default_asha_at_all_budgets")}
        print(f"{k:<{width}}  {v:.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
