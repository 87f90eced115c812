"""Loading a search space: YAML files that say what Optuna picks and how Ray Tune runs it (docs/design.md §6).

A space is validated in full when it is loaded (every key, every range, and an egomodel config built
from each parameter's extreme values), so that a bad space fails before any trial starts, with a
message that names the offending key. The format is documented in ``docs/search_spaces.md``.

The text is read by ``strict_yaml``, single fields are checked by ``fields``, values and points against
the params (and the deep check) by ``checks``; what a loaded space is lives in ``types``, and the Optuna /
Ray side (names, sampling, decoding a trial) in ``sampling`` (all in ``tuning/space/``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from egomodel import config as ecfg
from tuning.space import fields
from tuning.space.checks import check_point, deep_check
from tuning.space.errors import SpaceError
from tuning.space.objectives import check_scheduler, parse_champion, parse_export, parse_objectives
from tuning.space.overrides import split
from tuning.space.rungs import parse_rungs, resolve_rungs
from tuning.space.strict_yaml import read_yaml
from tuning.space.types import DEFAULT_CHECKPOINT_INTERVAL_S, SCHEDULER_FIELDS, Param, Scheduler, SearchSpace

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"

TYPES = ("float", "int", "categorical", "subset")
MODES = ("max", "min")
SCHEDULERS = ("asha", "asha_promotion", "moasha", "moasha_promotion", "fifo")
TOP_KEYS = (
    "name",
    "description",
    "metric",
    "mode",
    "num_samples",
    "max_concurrent",
    "seed",
    "resources",
    "scheduler",
    "base",
    "params",
    "points",
    "evaluate_test",
    "checkpoint_interval_s",
    "plots",
    "objectives",
    "export",
    "champion",
)
_FIELDS = {  # allowed fields of a param spec, per type
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
    "subset": ("type", "choices", "always", "when"),
}


# --- params -----------------------------------------------------------------------------------------------


def _numeric_param(key: str, where: str, spec: dict[str, Any]) -> Param:
    integer = spec["type"] == "int"
    low, high = fields.bounds(where, spec, integer)
    log = fields.boolean(f"{where}.log", spec.get("log", False))
    step = spec.get("step")
    if integer:
        step = 1 if step is None else fields.number(f"{where}.step", step, integer=True)
        if step < 1:
            raise SpaceError(f"{where}.step: {step} must be >= 1")
        if log and step != 1:
            raise SpaceError(f"{where}.step: a log-scale int param must have step 1 (Optuna), got {step}")
        if log and low < 1:
            raise SpaceError(f"{where}.low: a log-scale int param needs low >= 1, got {low}")
        if (high - low) % step:
            raise SpaceError(f"{where}.step: high - low ({high - low}) is not a multiple of step {step}")
    else:
        if log and low <= 0:
            raise SpaceError(f"{where}.low: a log-scale param needs low > 0, got {low}")
        if step is not None:
            step = fields.number(f"{where}.step", step)
            if step <= 0:
                raise SpaceError(f"{where}.step: {step} must be > 0")
            if log:
                raise SpaceError(f"{where}.step: a float param cannot have both log and step (Optuna)")
            if not fields.divisible(high - low, step):
                raise SpaceError(f"{where}.step: high - low ({high - low}) is not a multiple of step {step}")
    return Param(key, spec["type"], low=low, high=high, log=log, step=step)


def _param(key: Any, spec: Any, known: dict[str, Any], base: dict[str, Any]) -> tuple[Param, Any]:
    """A param without its condition, and the raw ``when`` (checked once every param is known)."""
    where = f"params.{key}"
    if not isinstance(key, str) or key not in known:
        raise SpaceError(f"{where}: not an egomodel config key{fields.suggestion(str(key), list(known))}")
    if key in base:
        raise SpaceError(f"{where}: also set in base; a key is either fixed in base or searched in params")
    spec = fields.mapping(where, spec, " such as {type: float, low: 0.1, high: 10}")
    if "type" not in spec:
        raise SpaceError(f"{where}.type: missing (one of {', '.join(TYPES)})")
    t = spec["type"]
    if t not in TYPES:
        raise SpaceError(f"{where}.type: unknown type {t!r} (known: {', '.join(TYPES)})")
    for f in spec:
        if f not in _FIELDS[t]:
            raise SpaceError(f"{where}.{f}: unknown field for a {t} param (allowed: {', '.join(_FIELDS[t])})")
    if t in ("float", "int"):
        param = _numeric_param(key, where, spec)
    elif t == "categorical":
        if "choices" not in spec:
            raise SpaceError(f"{where}.choices: missing")
        param = Param(key, t, choices=fields.choices(f"{where}.choices", spec["choices"]))
    else:
        if "choices" not in spec:
            raise SpaceError(f"{where}.choices: missing")
        choices = fields.blocks(f"{where}.choices", spec["choices"])
        always = fields.blocks(f"{where}.always", spec.get("always", []), allow_empty=True)
        both = [b for b in always if b in choices]
        if both:
            raise SpaceError(f"{where}.always: {both} also listed in choices")
        param = Param(key, t, choices=choices, always=always)
    return param, spec.get("when")


def _conditions(params: dict[str, Param], raw_when: dict[str, Any]) -> dict[str, Param]:
    """Attach each param's ``when`` (validated against the params it names)."""
    out = {}
    for key, p in params.items():
        raw = raw_when.get(key)
        if raw is None:
            out[key] = p
            continue
        where = f"params.{key}.when"
        raw = fields.mapping(where, raw, " of {other_param: [values]}")
        if not raw:
            raise SpaceError(f"{where}: empty; leave it out for an unconditional param")
        when = []
        for other, values in raw.items():
            w = f"{where}.{other}"
            if other == key:
                raise SpaceError(f"{w}: a param cannot depend on itself")
            if other not in params:
                raise SpaceError(f"{w}: not a param of this space (a condition names another param)")
            target = params[other]
            if target.type != "categorical":
                raise SpaceError(f"{w}: conditions can only name categorical params, {other} is {target.type}")
            values = values if isinstance(values, list) else [values]
            if not values:
                raise SpaceError(f"{w}: empty list of values")
            allowed = []
            for v in values:
                found, canon = fields.match(v, target.choices)
                if not found:
                    raise SpaceError(f"{w}: {v!r} is not one of {other}'s choices {list(target.choices)}")
                allowed.append(canon)
            when.append((other, tuple(allowed)))
        out[key] = dataclasses.replace(p, when=tuple(when))
    return out


def _order(params: dict[str, Param]) -> tuple[Param, ...]:
    """Params in file order, moved only as needed so each comes after the params its condition names."""
    done: dict[str, Param] = {}
    visiting: list[str] = []

    def visit(key: str) -> None:
        if key in done:
            return
        if key in visiting:
            cycle = " -> ".join(visiting[visiting.index(key) :] + [key])
            raise SpaceError(f"params.{key}.when: conditions form a cycle ({cycle})")
        visiting.append(key)
        for other, _ in params[key].when:
            visit(other)
        visiting.pop()
        done[key] = params[key]

    for key in params:
        visit(key)
    return tuple(done.values())



# --- loading ----------------------------------------------------------------------------------------------


def _scheduler(v: Any) -> Scheduler:
    v = fields.mapping("scheduler", v, " such as {type: asha, rungs: auto, reduction_factor: 2}")
    t = v.get("type", "asha")
    if t not in SCHEDULERS:
        raise SpaceError(f"scheduler.type: unknown scheduler {t!r} (known: {', '.join(SCHEDULERS)})")
    for f in v:
        if f not in SCHEDULER_FIELDS[t]:
            raise SpaceError(
                f"scheduler.{f}: unknown field for the {t} scheduler (allowed: {', '.join(SCHEDULER_FIELDS[t])})"
            )
    grace = v.get("grace_period", "auto")
    if grace == "auto":
        grace = None
    elif isinstance(grace, bool) or not isinstance(grace, int) or grace < 1:
        raise SpaceError(f'scheduler.grace_period: expected an integer >= 1 or "auto", got {grace!r}')
    factor = fields.number("scheduler.reduction_factor", v.get("reduction_factor", 2.0))
    if factor <= 1:
        raise SpaceError(f"scheduler.reduction_factor: {factor} must be > 1")
    rungs = parse_rungs(v.get("rungs", "auto"))
    if rungs is not None and grace is not None:
        raise SpaceError("scheduler: give rungs or grace_period, not both")
    return Scheduler(t, grace, factor, rungs)


def _base_file(v: Any, path: Path, params: Any) -> Any:
    """``base: FILE`` names a settings file (nested or dotted; the ``config.yaml`` a run wrote works as is),
    relative to the space's folder. Its keys that the space searches give way to ``params``."""
    if not isinstance(v, str):
        return v
    file = (path.parent / v).expanduser()
    try:
        values = read_yaml(file, file.read_text())
    except OSError as e:
        raise SpaceError(f"base: cannot read the settings file {file}: {e.strerror or e}") from None
    searched = set(params) if isinstance(params, dict) else set()
    flat = ecfg.flatten(fields.mapping(f"base ({file})", values or {}, " of egomodel keys (dotted or nested)"))
    return {k: val for k, val in flat.items() if k not in searched}


def _parse(data: Any, path: Path, text: str, base_set: dict[str, Any] | None = None) -> SearchSpace:
    data = fields.mapping("space", data, " with keys such as metric, base, params")
    for k in data:
        if k not in TOP_KEYS:
            hint = fields.suggestion(str(k), list(TOP_KEYS))
            raise SpaceError(f"{k}: unknown top-level key (known: {', '.join(TOP_KEYS)}){hint}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise SpaceError(f"name: expected a non-empty string, got {name!r}")
    description = data.get("description")
    description = "" if description is None else description
    if not isinstance(description, str):
        raise SpaceError(f"description: expected a string, got {description!r}")
    objectives = parse_objectives(data.get("objectives"), data)
    metric = objectives[0][0] if objectives else data.get("metric", "val_top1")
    if not isinstance(metric, str) or not metric.strip():
        raise SpaceError(f"metric: expected a metric name (a string), got {metric!r}")
    mode = objectives[0][1] if objectives else data.get("mode", "max")
    if mode not in MODES:
        raise SpaceError(f"mode: expected max or min, got {mode!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise SpaceError(f"seed: expected an integer in [0, 2**32), got {seed!r}")
    resources = fields.resources(data.get("resources", {}))
    scheduler = _scheduler(data.get("scheduler", {"type": "moasha"} if objectives else {}))
    check_scheduler(objectives, scheduler.type)

    known = ecfg.known_keys()
    base = {**fields.base(_base_file(data.get("base"), path, data.get("params")), known), **(base_set or {})}
    raw_params = data.get("params")
    if raw_params is None or raw_params == {}:
        raise SpaceError("params: missing or empty; a space needs at least one param to search")
    raw_params = fields.mapping("params", raw_params, " of dotted egomodel keys to param specs")
    plain: dict[str, Param] = {}
    raw_when: dict[str, Any] = {}
    for key, spec in raw_params.items():
        plain[key], raw_when[key] = _param(key, spec, known, base)
    params = _order(_conditions(plain, raw_when))

    raw_points = data.get("points") or []
    if not isinstance(raw_points, list):
        raise SpaceError(f"points: expected a list of mappings, got {raw_points!r}")
    points = tuple(check_point(params, p, f"points[{i}]", base) for i, p in enumerate(raw_points))

    num_samples = fields.int_at_least("num_samples", data.get("num_samples", max(1, len(points))), 1)
    max_concurrent = fields.int_at_least("max_concurrent", data.get("max_concurrent", 1), 1)

    evaluate_test = fields.boolean("evaluate_test", data.get("evaluate_test", False))
    interval = fields.number("checkpoint_interval_s", data.get("checkpoint_interval_s", DEFAULT_CHECKPOINT_INTERVAL_S))
    if interval < 0:
        raise SpaceError(f"checkpoint_interval_s: {interval} must be >= 0 (0: a checkpoint after every epoch)")
    deep_check(base, params, points)
    space = SearchSpace(
        evaluate_test=evaluate_test,
        checkpoint_interval_s=float(interval),
        plots=fields.boolean("plots", data.get("plots", True)),
        objectives=objectives,
        export=parse_export(data.get("export")),
        champion=parse_champion(data.get("champion"), objectives),
        name=name,
        path=path,
        text=text,
        metric=metric,
        mode=mode,
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        seed=seed,
        resources=resources,
        scheduler=scheduler,
        base=base,
        params=params,
        points=points,
    )
    if scheduler.type != "fifo":  # the rungs against the base schedule: a bad one fails here
        resolve_rungs(space, ecfg.from_dict({}, base))
    return space


def list_spaces() -> list[str]:
    """Names of the shipped spaces (``search_spaces/*.yaml``)."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def _resolve(name_or_path: str | Path) -> Path:
    s = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in s or "\\" in s or s.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_file() and path.parent == Path(".") and (SPACES_DIR / path.name).is_file():
            path = SPACES_DIR / path.name  # "smoke.yaml" from any working folder
        if not path.is_file():
            raise SpaceError(f"{path}: no such search-space file")
        return path
    path = SPACES_DIR / f"{s}.yaml"
    if not path.is_file():
        raise SpaceError(
            f"unknown search space {s!r} (available: {', '.join(list_spaces()) or 'none'}; "
            "or give a path to a .yaml file)"
        )
    return path


def load_space(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> SearchSpace:
    """Load and fully validate a space: a shipped name (``smoke``) or a path to a YAML file, changed by
    ``overrides`` (``--set``'s dotted keys: :mod:`tuning.space.overrides`) before it is validated."""
    path = _resolve(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"{path}: cannot read: {e}") from None
    data = read_yaml(path, text)
    try:
        data, base_set = split(data, overrides or {})
        return _parse(data, path, text, base_set)
    except SpaceError as e:
        given = f" with --set {' '.join(f'{k}={v}' for k, v in overrides.items())}" if overrides else ""
        raise SpaceError(f"{path}{given}: {e}") from None

