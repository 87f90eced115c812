"""A space's ``objectives`` (a multi-objective search), its ``export`` and ``champion`` keys.

``objectives: [{name: val_top1, direction: max}, {name: gflops, direction: min}]`` makes the search
multi-objective: Optuna gets one direction per objective, the scheduler must be ``moasha`` (or ``fifo``),
and the first objective is also the space's ``metric``/``mode`` (what a single number is reported as).
"""

from __future__ import annotations

from typing import Any

from tuning.space import fields
from tuning.space.errors import SpaceError

EPOCH_METRICS = ("val_top1", "val_loss", "train_top1", "train_loss")  # every trial, every epoch (egomodel)
COST_METRICS = ("gflops", "params_m")  # a multi-objective search's trials, from egomodel.cost
REPORTED = EPOCH_METRICS + COST_METRICS
EXPORTS = ("onnx",)
CHAMPION_KEYS = ("max_gflops", "min_top1")
MULTI_SCHEDULERS = ("moasha", "moasha_promotion", "fifo")


def parse_objectives(v: Any, data: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The ``objectives`` list as (name, direction) pairs; () when the key is absent."""
    if v is None:
        return ()
    if "metric" in data or "mode" in data:
        raise SpaceError("objectives: give objectives or metric/mode, not both (the first objective is the metric)")
    if not isinstance(v, list) or len(v) < 2:
        raise SpaceError(f"objectives: expected a list of two or more {{name: ..., direction: max|min}}, got {v!r}")
    out = []
    for i, o in enumerate(v):
        where = f"objectives[{i}]"
        if not isinstance(o, dict) or set(o) != {"name", "direction"}:
            raise SpaceError(f"{where}: expected {{name: METRIC, direction: max|min}}, got {o!r}")
        name, direction = o["name"], o["direction"]
        if name not in REPORTED:
            raise SpaceError(f"{where}.name: no trial reports {name!r} (trials report: {', '.join(REPORTED)})"
                             f"{fields.suggestion(str(name), list(REPORTED))}")
        if direction not in ("max", "min"):
            raise SpaceError(f"{where}.direction: expected max or min, got {direction!r}")
        if name in (n for n, _ in out):
            raise SpaceError(f"{where}.name: {name!r} is already an objective")
        out.append((name, direction))
    if not any(n in EPOCH_METRICS for n, _ in out):
        raise SpaceError("objectives: at least one must be a per-epoch metric (" + ", ".join(EPOCH_METRICS)
                         + "); the costs do not change while a trial trains")
    return tuple(out)


def check_scheduler(objectives: tuple[tuple[str, str], ...], scheduler_type: str) -> None:
    if objectives and scheduler_type not in MULTI_SCHEDULERS:
        names = ", ".join(n for n, _ in objectives)
        raise SpaceError(f"scheduler.type: {scheduler_type} compares trials on one number and cannot stop trials "
                         f"on the {len(objectives)} objectives ({names}); use type: moasha, moasha_promotion "
                         "(or fifo)")
    if not objectives and scheduler_type.startswith("moasha"):
        raise SpaceError(f"scheduler.type: {scheduler_type} needs two or more objectives (an objectives list); "
                         f"with one metric use type: {scheduler_type[2:]}")


def parse_export(v: Any) -> str:
    if v is None or v is False:
        return ""
    if v not in EXPORTS:
        raise SpaceError(f"export: expected one of {', '.join(EXPORTS)} (or leave it out), got {v!r}")
    return v


def parse_champion(v: Any, objectives: tuple[tuple[str, str], ...]) -> tuple[tuple[str, float], ...]:
    """``champion: {max_gflops: X, min_top1: Y}``: how the champion is picked from the Pareto front."""
    if v is None:
        return ()
    if not {"val_top1", "gflops"} <= {n for n, _ in objectives}:
        raise SpaceError("champion: picks from the front of val_top1 and gflops; the objectives must include both")
    v = fields.mapping("champion", v, " such as {max_gflops: 20, min_top1: 0.5}")
    out = []
    for k, x in v.items():
        if k not in CHAMPION_KEYS:
            raise SpaceError(f"champion.{k}: unknown key (known: {', '.join(CHAMPION_KEYS)})"
                             f"{fields.suggestion(str(k), list(CHAMPION_KEYS))}")
        x = fields.number(f"champion.{k}", x)
        if x < 0 or (k == "min_top1" and x > 1):
            raise SpaceError(f"champion.{k}: {x} is out of range ({'[0, 1]' if k == 'min_top1' else '>= 0'})")
        out.append((k, float(x)))
    return tuple(out)
