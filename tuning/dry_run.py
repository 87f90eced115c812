"""``python -m tuning.search --dry-run``: what a search would do, printed; no Ray, no data, nothing written.

Trials and concurrency, the scheduler and its rungs (and where they fall in each variant's stages), the
resources of one trial and how many fit on each node type (a cluster file's ``available_node_types`` with
``--cluster FILE``, else this machine), the stage-1 prefixes the trials can share through the stage store,
and an estimate of GPU-hours from the space's schedule, with the figures it assumes.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

from egomodel.config import Config, ConfigError, from_dict
from egomodel.training.stage_keys import first_stage_reading, stage_key
from egomodel.training.stages import stage_plan
from tuning.space.errors import SpaceError
from tuning.space.rungs import resolve_rungs
from tuning.space.types import SearchSpace

REPO = Path(__file__).resolve().parents[1]
DEVICE_JSON = REPO / "benchmarks" / "results" / "device_h100.json"  # python -m benchmarks.device on an H100
GTEA61_CLIPS = 460  # about 460 clips over 4 users (benchmarks/trial.py's real shape has 469)
BENCH_SHAPE = ("batch", "frames", "size")  # the shape of the measured steps, keys of the device JSON


def variants(space: SearchSpace, cfg: Config) -> list[str]:
    """The model variants a trial can have: the searched choices, else the base config's."""
    for p in space.params:
        if p.key == "model.variant":
            return list(p.choices)
    return [cfg.model.variant]


def variant_config(cfg: Config, variant: str) -> Config:
    return from_dict(cfg.to_dict(), {"model.variant": variant})


def rung_lines(space: SearchSpace, cfg: Config) -> list[str]:
    if space.scheduler.type == "fifo":
        return ["scheduler: fifo (every trial runs its full schedule)"]
    rungs = resolve_rungs(space, cfg)
    out = [f"scheduler: {space.scheduler.type}, reduction factor {space.scheduler.reduction_factor:g}; rungs at "
           f"global epochs {', '.join(map(str, rungs))}"]
    for v in variants(space, cfg):
        plan = stage_plan(v, variant_config(cfg, v).train)
        where, start = [], 0
        for s in plan:
            where += [f"{r} = stage {s.number} epoch {r - start}" for r in rungs if start < r <= start + s.epochs]
            start += s.epochs
        after = [str(r) for r in rungs if r >= start]
        stages = " + ".join(str(s.epochs) for s in plan)
        out.append(f"  {v}: stages {stages} = {start} epochs; rungs {'; '.join(where) or 'none inside'}"
                   + (f" ({', '.join(after)} after its last epoch: it finishes first)" if after else ""))
    return out


def node_types_of(cluster_file: str | None) -> tuple[str, dict[str, dict[str, float]]]:
    """(where from, node type -> {CPU, GPU}): the cluster file's declared node types, else this machine."""
    if cluster_file:
        import yaml

        try:
            types = (yaml.safe_load(Path(cluster_file).read_text()) or {}).get("available_node_types") or {}
        except (OSError, yaml.YAMLError) as e:
            raise SpaceError(f"--cluster {cluster_file}: cannot read it: {e}") from None
        if not types:
            raise SpaceError(f"--cluster {cluster_file}: no available_node_types (a Ray cluster launcher file)")
        out = {n: {k: float(v) for k, v in ((s or {}).get("resources") or {}).items()} for n, s in types.items()}
        return f"node types of {cluster_file}", out
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return "this machine (no --cluster FILE)", {"local": {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}}


def per_node(resources: dict[str, float], node: dict[str, float]) -> tuple[int | None, str]:
    """How many trials fit on a node at once (None when the node's resources are not declared), and the
    resource that limits it."""
    if not node:
        return None, ""
    counts = {k: math.floor(node.get(k.upper(), 0.0) / v + 1e-9) for k, v in resources.items() if v > 0}
    if not counts:
        return None, ""
    limit = min(counts, key=counts.get)
    return counts[limit], limit


def resource_lines(space: SearchSpace, cluster_file: str | None) -> list[str]:
    res = {k: float(v) for k, v in space.resources.items()}
    source, types = node_types_of(cluster_file)
    out = [f"resources per trial: {', '.join(f'{k} {v:g}' for k, v in res.items())}; packing on {source}:"]
    for name, node in types.items():
        n, limit = per_node(res, node)
        have = ", ".join(f"{k} {v:g}" for k, v in node.items() if k in ("CPU", "GPU")) or "resources not declared"
        fit = "? trials" if n is None else f"{n} trial{'s' if n != 1 else ''} at once, by {limit}"
        out.append(f"  {name} ({have}): {fit}" + (" (cannot run a trial)" if n == 0 else ""))
    return out


def stage1_prefixes(space: SearchSpace, cfg: Config) -> tuple[int | None, list[str]]:
    """(distinct stage-1 results over the choices of the params that act in stage 1 or None when a continuous
    one does (every trial then differs), the names of those params)."""
    acting = [p for p in space.params if first_stage_reading(p.key, [1, 2, 3]) == 1]
    if any(p.type in ("float", "int") for p in acting):
        return None, [p.key for p in acting]
    choices = [p.choices if p.type == "categorical" else
               [list(p.always) + list(c) for r in range(len(p.choices) + 1)
                for c in itertools.combinations(p.choices, r)] for p in acting]
    keys = set()
    for combo in itertools.product(*choices):
        try:
            keys.add(stage_key(from_dict(cfg.to_dict(), dict(zip([p.key for p in acting], combo))), "", 1))
        except (ConfigError, ValueError, TypeError):  # a combination egomodel refuses
            continue
    return len(keys), [p.key for p in acting]


def reuse_line(space: SearchSpace, cfg: Config, trials: int, store: bool) -> str:
    if not store:
        return "stage store: off (--no-stage-store): every trial computes all its stages"
    n, acting = stage1_prefixes(space, cfg)
    if n is None:
        return (f"stage store: every trial computes its own stage 1 ({', '.join(acting)} continuous and read "
                "in stage 1); later stages differ anyway")
    by = f" (over {', '.join(acting)})" if acting else " (no searched param acts in stage 1)"
    k = min(n, trials)
    return (f"stage store: at most {n} distinct stage-1 prefix{'es' if n != 1 else ''}{by}; stage 1 computed "
            f"at most {k} time{'s' if k != 1 else ''} for {trials} trials, the others reuse it")


def _device_figures(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SpaceError(f"the GPU-hour estimate reads {path}: {e}") from None


def stage_seconds(cfg: Config, figures: dict[str, Any], train_clips: int) -> list[tuple[int, float]]:
    """(epochs, seconds per epoch) of each stage of ``cfg``'s schedule on the measured device: the trial
    section's steady epoch times when the JSON has them, else its step times scaled to the stage's batch
    and clip shape (a step's time taken as proportional to clips x frames x pixels)."""
    plan = stage_plan(cfg.model.variant, cfg.train)
    steady = (figures.get("trial") or {}).get("steady_epoch_s") or {}
    out = []
    for s in plan:
        if str(s.number) in steady:
            out.append((s.epochs, float(steady[str(s.number)])))
            continue
        step = figures["stage3_step_s"] if s.name == "stage3" else figures["ours_step_s"]
        batch, frames, size = (float(figures[k]) for k in BENCH_SHAPE)
        per_clip = step / batch * (cfg.data.frames / frames) * (cfg.data.image_size / size) ** 2
        steps = math.ceil(train_clips / s.batch_size)
        wait = float(figures.get(f"short_training_stage{s.number}_data_wait") or 0.0)  # the trainer idle, waiting
        out.append((s.epochs, steps * s.batch_size * per_clip / (1.0 - min(wait, 0.95))))
    return out


def train_clips(cfg: Config) -> int:
    d = cfg.data
    users = max(0, 4 - len(d.test_users) - len(d.val_users)) / 4
    return max(1, round(GTEA61_CLIPS * users * (1 if d.val_users else 1 - d.val_fraction)))


def asha_fraction(space: SearchSpace, cfg: Config, total: int) -> float:
    """The expected share of a full schedule a trial runs when 1/reduction_factor of the trials pass each rung."""
    if space.scheduler.type == "fifo":
        return 1.0
    rungs = [r for r in resolve_rungs(space, cfg) if r < total]
    edges, share, alive = [0, *rungs, total], 0.0, 1.0
    for i in range(len(edges) - 1):
        share += alive * (edges[i + 1] - edges[i])
        alive /= space.scheduler.reduction_factor
    return share / total


def _hours(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:.1f}" if h >= 1 else f"{h:.2f}" if h >= 0.01 else "< 0.01"


def estimate_lines(space: SearchSpace, cfg: Config, trials: int, device_json: Path = DEVICE_JSON) -> list[str]:
    figures = _device_figures(device_json)
    clips = train_clips(cfg)
    full, expected = [], []
    for v in variants(space, cfg):
        c = variant_config(cfg, v)
        stages = stage_seconds(c, figures, clips)
        seconds = sum(e * s for e, s in stages)
        full.append(seconds)
        expected.append(seconds * asha_fraction(space, c, sum(e for e, _ in stages)))
    mean_full, mean_exp = sum(full) / len(full), sum(expected) / len(expected)
    trial = "the trial section's steady epoch times" if figures.get("trial") else \
        f"step times ours_step_s {figures['ours_step_s']:.4f} s (stages 1, 2 and others) and stage3_step_s " \
        f"{figures['stage3_step_s']:.4f} s at batch {figures['batch']} x {figures['frames']} frames x " \
        f"{figures['size']} px, scaled to each stage's batch, frames and image size, over 1 - the data-wait " \
        "fraction measured in each stage of its short training run (short_training_stageN_data_wait)"
    per_trial = f"{_hours(mean_full)} h per trial, mean over {len(full)} variant{'s' if len(full) != 1 else ''}"
    stopping = "" if space.scheduler.type == "fifo" else \
        f"{_hours(trials * mean_exp)} with the scheduler stopping trials at its rungs, "
    return [
        f"GPU-hours (estimate): {stopping}{_hours(trials * mean_full)} if every trial runs its full schedule "
        f"({per_trial})",
        f"  assumes: {trial} from {device_json.relative_to(REPO) if device_json.is_relative_to(REPO) else device_json}"
        f" ({figures.get('device', 'device not recorded')}); {clips} training clips per epoch (GTEA61's "
        f"{GTEA61_CLIPS} clips, test users {cfg.data.test_users}, val fraction {cfg.data.val_fraction:g}); one "
        "trial on a whole GPU (a fraction of one does the same work); validation and start-up not counted"
        + ("" if space.scheduler.type == "fifo" else "; 1/reduction_factor of the trials pass each rung"),
    ]


def report(space: SearchSpace, num_samples: int | None, max_concurrent: int | None, cluster_file: str | None,
           stage_store: bool = True) -> str:
    """The dry run's lines for ``space`` (already validated, ``--set`` applied)."""
    cfg = from_dict({}, space.base)
    trials = num_samples or space.num_samples
    lines = [f"dry run of the space {space.name} ({space.path}): nothing is started or written",
             f"trials: {trials}; at most {max_concurrent or space.max_concurrent} at once; metric {space.metric} "
             f"({space.mode})" + (f"; objectives {', '.join(f'{n} ({m})' for n, m in space.objectives)}"
                                  if space.objectives else ""),
             *rung_lines(space, cfg), *resource_lines(space, cluster_file),
             reuse_line(space, cfg, trials, stage_store), *estimate_lines(space, cfg, trials)]
    return "\n".join(lines)
