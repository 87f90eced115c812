"""What a loaded search space is: its params, its scheduler and the space itself, as frozen dataclasses.

In a module of their own, so that loading (``tuning.space.load``), the checks (``tuning.space.checks``)
and the Optuna side (``tuning.space.sampling``) all use them without importing one another. Ray pickles
``Param`` (inside the define-by-run function) and ``SearchSpace`` (inside the MLflow callback) into a
search's saved state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CHECKPOINT_INTERVAL_S = 300.0  # a retried trial repeats at most this much work
# the fields each scheduler type takes in a space's scheduler block (the rung schedulers share ASHA's)
SCHEDULER_FIELDS = {"asha": ("type", "rungs", "grace_period", "reduction_factor"), "fifo": ("type",)}
for _t in ("asha_promotion", "moasha", "moasha_promotion"):  # the same rungs; multi-objective rank, or pausing
    SCHEDULER_FIELDS[_t] = SCHEDULER_FIELDS["asha"]


@dataclass(frozen=True)
class Param:
    """One searched dimension, keyed by its dotted egomodel config key."""

    key: str
    type: str  # float | int | categorical | subset
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    always: tuple = ()  # subset only: blocks always included
    when: tuple[tuple[str, tuple], ...] = ()  # sampled only if each (other_key, allowed values) holds


@dataclass(frozen=True)
class Scheduler:
    type: str = "asha"  # asha | asha_promotion | moasha | moasha_promotion (several objectives) | fifo
    grace_period: int | None = None  # Ray's geometric rungs from this epoch; None: see rungs
    reduction_factor: float = 2.0
    # (stage, epoch) pairs, stage 0 for a global epoch; None with grace_period None: auto
    # (tuning.space.rungs, which resolves them against a schedule)
    rungs: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True)
class SearchSpace:
    name: str
    path: Path
    text: str  # the raw YAML, logged to MLflow as an artifact
    metric: str
    mode: str
    num_samples: int
    max_concurrent: int
    seed: int
    resources: dict[str, float]  # per trial: {"cpu": .., "gpu": ..}
    scheduler: Scheduler
    base: dict[str, Any]  # dotted egomodel overrides applied to every trial
    params: tuple[Param, ...]  # in dependency order: a condition's param comes before its dependants
    points: tuple[dict[str, Any], ...]  # dotted keys, subset values as lists (always + chosen)
    evaluate_test: bool = False  # trials also score the test users (a reproduction, not a selection)
    # a trial hands Ray a resume checkpoint at most this often (and at its end); 0: after every epoch
    checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S
    plots: bool = True  # each finished trial draws its curves, CAMs and feedback maps (about 1.5 s on a CPU)
    # (name, "max" | "min") pairs of a multi-objective search, () for one metric (tuning.space.objectives);
    # the first is also metric/mode
    objectives: tuple[tuple[str, str], ...] = ()
    export: str = ""  # "onnx": the champion is exported at registration (tuning.export)
    champion: tuple[tuple[str, float], ...] = ()  # (max_gflops | min_top1, value): the champion from the front
