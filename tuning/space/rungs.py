"""Where ASHA compares trials: its rungs, in global epochs (stage 1's epochs, then stage 2's, ...).

A rung is worth something only where the compared trials already differ. A searched param acts from the
first stage whose result depends on its key (``egomodel.training.stage_keys.first_stage_reading``): in
``ablation.yaml`` alpha, tau and the stage-2 rate act from stage 2, the insertion point and the stage-3
keys from stage 3, and stage 1 is the same for every trial. ``rungs: auto`` puts the first rung on the
epoch after the first learning-rate milestone of the earliest stage a searched param acts on (half that
stage when it has no milestone), the next ones at the reduction factor's multiples of it, and one inside
the last stage (after its first milestone) when none falls there. A space may instead list rungs as
global epochs or as ``{stage: N, epoch: E}`` (epoch E of stage N); :func:`resolve_rungs` checks them.
"""

from __future__ import annotations

from typing import Any

from egomodel.config import Config
from tuning.space.errors import SpaceError
from tuning.space.types import SearchSpace

RUNG_HINT = "a list of global epochs or {stage: N, epoch: E} mappings, or auto"


def parse_rungs(v: Any) -> tuple[tuple[int, int], ...] | None:
    """The space file's ``scheduler.rungs``: None for ``auto``, else (stage, epoch) pairs, stage 0 for a
    global epoch. Types only: where they fall is checked against the schedule by :func:`resolve_rungs`."""
    if v == "auto":
        return None
    if not isinstance(v, list) or not v:
        raise SpaceError(f"scheduler.rungs: expected {RUNG_HINT}, got {v!r}")
    out = []
    for i, r in enumerate(v):
        where = f"scheduler.rungs[{i}]"
        if isinstance(r, dict):
            if set(r) != {"stage", "epoch"}:
                raise SpaceError(f"{where}: a stage-relative rung has exactly the keys stage and epoch, got {r!r}")
            stage, epoch = r["stage"], r["epoch"]
        else:
            stage, epoch = 0, r
        for name, n in (("stage", stage), ("epoch", epoch)):
            if isinstance(n, bool) or not isinstance(n, int) or n < (0 if name == "stage" else 1):
                raise SpaceError(f"{where}: {name} must be an integer >= 1, got {n!r}")
        if isinstance(r, dict) and stage < 1:
            raise SpaceError(f"{where}: stage must be an integer >= 1, got {stage!r}")
        out.append((stage, epoch))
    return tuple(out)


def acting_stage(space: SearchSpace, cfg: Config) -> tuple[int, list[str]]:
    """The earliest stage (its number) in which a searched param acts, and the params acting there."""
    from egomodel.training.stage_keys import first_stage_reading
    from egomodel.training.stages import stage_plan

    numbers = [s.number for s in stage_plan(cfg.model.variant, cfg.train)]
    first = {p.key: first_stage_reading(p.key, numbers) for p in space.params}
    stage = min(first.values())
    return stage, [k for k, s in first.items() if s == stage]


def _after_first_milestone(offset: int, stage: Any) -> int:
    m = stage.milestones[0] if stage.milestones else max(1, stage.epochs // 2)
    return offset + m + 1


def resolve_rungs(space: SearchSpace, cfg: Config) -> tuple[int, ...]:
    """The ASHA rungs of ``space`` for the schedule of ``cfg`` (its variant, ``train.epochs_scale``), as
    increasing global epochs, each below the last epoch (a trial reaching it is finished anyway).

    Raises ``SpaceError`` for a rung outside its stage or the run, one before the first stage in which
    a searched param acts, rungs out of order, or (``auto``) a schedule too short for any rung."""
    from egomodel.training.stages import stage_plan

    plan = stage_plan(cfg.model.variant, cfg.train)
    offsets = {s.number: sum(x.epochs for x in plan[:i]) for i, s in enumerate(plan)}
    by_number = {s.number: s for s in plan}
    total = sum(s.epochs for s in plan)
    first, acting = acting_stage(space, cfg)
    sched = space.scheduler
    factor = sched.reduction_factor
    if sched.rungs is None and sched.grace_period is None:  # auto
        rungs = [_after_first_milestone(offsets[first], by_number[first])]
        if rungs[0] >= total:
            raise SpaceError(
                f"scheduler.rungs: auto finds no rung: stage {first}, where {', '.join(acting)} first act, ends the "
                f"run ({total} epochs) right after its first milestone; use type: fifo, or list rungs")
        while round(rungs[-1] * factor) < total:
            rungs.append(round(rungs[-1] * factor))
        last = plan[-1]
        if rungs[-1] <= offsets[last.number]:
            r = min(_after_first_milestone(offsets[last.number], last), total - 1)
            if r > offsets[last.number]:
                rungs.append(r)
        return tuple(rungs)
    if sched.rungs is None:  # grace_period: N, Ray's geometric rungs from N
        pairs, r = [], float(sched.grace_period)
        while round(r) < total:
            pairs.append((0, round(r)))
            r *= factor
        if not pairs:
            raise SpaceError(f"scheduler.grace_period: {sched.grace_period} is not below the run's {total} epochs")
    else:
        pairs = list(sched.rungs)
    rungs = []
    for i, (stage, epoch) in enumerate(pairs):
        where = f"scheduler.rungs[{i}]" if sched.rungs is not None else "scheduler.grace_period"
        if stage:
            if stage not in by_number:
                raise SpaceError(f"{where}: stage {stage} is not a stage of the {cfg.model.variant} variant "
                                 f"(its stages: {', '.join(map(str, by_number))})")
            if epoch > by_number[stage].epochs:
                n = by_number[stage].epochs
                raise SpaceError(f"{where}: epoch {epoch} is outside stage {stage}'s epochs 1..{n} "
                                 f"(at train.epochs_scale {cfg.train.epochs_scale})")
            g = offsets[stage] + epoch
        else:
            g = epoch
        if g >= total:
            raise SpaceError(f"{where}: global epoch {g} is not below the run's last epoch {total} "
                             "(a rung there stops nothing)")
        in_stage = max(n for n, o in offsets.items() if o < g)
        if in_stage < first:
            raise SpaceError(
                f"{where}: global epoch {g} is in stage {in_stage}, before stage {first}, the first stage in which "
                f"a searched param acts ({', '.join(acting)}): the trials do not differ there yet")
        if rungs and g <= rungs[-1]:
            raise SpaceError(f"{where}: global epoch {g} does not come after the previous rung {rungs[-1]}")
        rungs.append(g)
    return tuple(rungs)


def longest_schedule(space: SearchSpace, cfg: Config) -> int:
    """The most global epochs a trial of ``space`` can run on top of ``cfg``: over the values of the params
    that change the schedule (``model.variant``, ``train.epochs_scale``, a stage's ``epochs``), at their
    choices or range ends. ASHA stops a trial at this ``max_t``; the base config's own length would stop a
    searched longer variant early."""
    from itertools import product

    from egomodel.config import from_dict
    from egomodel.training.stages import VARIANT_STAGES, stage_plan

    stages = {n for names in VARIANT_STAGES.values() for n in names}
    lengths = [p for p in space.params
               if p.key in ("model.variant", "train.epochs_scale")
               or (p.key.endswith(".epochs") and p.key.split(".")[1] in stages)]
    values = [p.choices if p.type == "categorical" else (p.low, p.high) for p in lengths]
    longest = sum(s.epochs for s in stage_plan(cfg.model.variant, cfg.train))
    for combo in product(*values):
        over = {p.key: (int(v) if p.type == "int" else v) for p, v in zip(lengths, combo)}
        try:
            c = from_dict(cfg.to_dict(), over)
            longest = max(longest, sum(s.epochs for s in stage_plan(c.model.variant, c.train)))
        except (ValueError, TypeError):  # a combination the config refuses (a condition the space sets)
            continue
    return longest
