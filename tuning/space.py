"""Search spaces: YAML files that say what Optuna picks and how Ray Tune runs it (DESIGN §6).

A space is validated in full when it is loaded (every key, every range, and an egomodel config built
from each parameter's extreme values), so that a bad space fails before any trial starts, with a
message that names the offending key. The format is documented in ``docs/search_spaces.md``.

Optuna names are the dotted egomodel keys (``model.alpha``); a subset of blocks becomes one boolean
categorical per block (``train.stage3.trainable[conv1]``). No name contains ``/``, the separator on
which Ray's ``OptunaSearch`` un-flattens a sampled config.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from egomodel import config as ecfg

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"

TYPES = ("float", "int", "categorical", "subset")
MODES = ("max", "min")
SCHEDULERS = ("asha", "fifo")
RESOURCES = ("cpu", "gpu")
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
)
_FIELDS = {  # allowed fields of a param spec, per type
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
    "subset": ("type", "choices", "always", "when"),
}
_SCHEDULER_FIELDS = {"asha": ("type", "grace_period", "reduction_factor"), "fifo": ("type",)}
_DEFAULT_RESOURCES = {"cpu": 1.0, "gpu": 0.0}
DEFAULT_CHECKPOINT_INTERVAL_S = 300.0  # a retried trial repeats at most this much work
_RESOURCE_PRECISION = 1e-4  # Ray rejects finer fractions


class SpaceError(ValueError):
    """A search space is malformed; the message names the offending key, e.g. ``params.model.alpha.low``."""


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
    type: str = "asha"
    grace_period: int | None = None  # None = auto: the first epoch after stage 1
    reduction_factor: float = 2.0


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


# --- YAML -------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """Safe YAML that reads ``1e-3`` as a float (YAML 1.1 needs a dot) and refuses duplicate keys."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _read_yaml(path: Path, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e).splitlines()[0]
        raise SpaceError(f"{where}: YAML syntax error: {problem}") from None
    except Exception as e:  # a tagged scalar that cannot be built, e.g. "!!float abc"
        raise SpaceError(f"{path}: cannot read the YAML: {e}") from None


# --- small checks -----------------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(where: str, v: Any, *, integer: bool = False) -> float | int:
    kind = "an integer" if integer else "a finite number"
    if not _is_number(v):
        raise SpaceError(f"{where}: expected {kind}, got {v!r}")
    if isinstance(v, int):
        try:
            return v if integer else float(v)
        except OverflowError:
            raise SpaceError(f"{where}: {v} is too large") from None
    if not math.isfinite(v) or (integer and not v.is_integer()):
        raise SpaceError(f"{where}: expected {kind}, got {v!r}")
    return int(v) if integer else v


def _bool(where: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise SpaceError(f"{where}: expected true or false, got {v!r}")
    return v


def _mapping(where: str, v: Any, hint: str = "") -> dict[Any, Any]:
    if not isinstance(v, dict):
        raise SpaceError(f"{where}: expected a mapping{hint}, got {v!r}")
    return v


def _suggest(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps true/1 and "1"/1 apart (YAML scalars)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b


def _match(value: Any, choices: tuple) -> tuple[bool, Any]:
    """(found, the canonical choice) for a categorical value."""
    for c in choices:
        if _same(value, c):
            return True, c
    return False, None


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v))


# --- params -----------------------------------------------------------------------------------------------


def _bounds(where: str, spec: dict[str, Any], integer: bool) -> tuple[Any, Any]:
    for f in ("low", "high"):
        if f not in spec:
            raise SpaceError(f"{where}.{f}: missing (a {spec['type']} param needs low and high)")
    low = _number(f"{where}.low", spec["low"], integer=integer)
    high = _number(f"{where}.high", spec["high"], integer=integer)
    if low >= high:
        raise SpaceError(f"{where}.low: {low} must be < high ({high})")
    return low, high


def _divisible(span: float, step: float) -> bool:
    q = span / step
    if not math.isfinite(q):
        return False
    return abs(q - round(q)) <= 1e-9 * max(1.0, abs(q))


def _numeric_param(key: str, where: str, spec: dict[str, Any]) -> Param:
    integer = spec["type"] == "int"
    low, high = _bounds(where, spec, integer)
    log = _bool(f"{where}.log", spec.get("log", False))
    step = spec.get("step")
    if integer:
        step = 1 if step is None else _number(f"{where}.step", step, integer=True)
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
            step = _number(f"{where}.step", step)
            if step <= 0:
                raise SpaceError(f"{where}.step: {step} must be > 0")
            if log:
                raise SpaceError(f"{where}.step: a float param cannot have both log and step (Optuna)")
            if not _divisible(high - low, step):
                raise SpaceError(f"{where}.step: high - low ({high - low}) is not a multiple of step {step}")
    return Param(key, spec["type"], low=low, high=high, log=log, step=step)


def _choices(where: str, v: Any, *, allow_empty: bool = False) -> tuple:
    if not isinstance(v, list) or (not v and not allow_empty):
        raise SpaceError(f"{where}: expected a non-empty list, got {v!r}")
    out: list[Any] = []
    for i, c in enumerate(v):
        if not _is_scalar(c):
            raise SpaceError(f"{where}[{i}]: a choice must be a string, number, true/false or null, got {c!r}")
        if _match(c, tuple(out))[0]:
            raise SpaceError(f"{where}[{i}]: duplicate choice {c!r}")
        out.append(c)
    return tuple(out)


def _blocks(where: str, v: Any, *, allow_empty: bool = False) -> tuple[str, ...]:
    out = _choices(where, v, allow_empty=allow_empty)
    for i, b in enumerate(out):
        if b not in ecfg.BLOCKS:
            raise SpaceError(f"{where}[{i}]: {b!r} is not an egomodel block (known: {', '.join(ecfg.BLOCKS)})")
    return out


def _param(key: Any, spec: Any, known: dict[str, Any], base: dict[str, Any]) -> tuple[Param, Any]:
    """A param without its condition, and the raw ``when`` (checked once every param is known)."""
    where = f"params.{key}"
    if not isinstance(key, str) or key not in known:
        raise SpaceError(f"{where}: not an egomodel config key{_suggest(str(key), list(known))}")
    if key in base:
        raise SpaceError(f"{where}: also set in base; a key is either fixed in base or searched in params")
    spec = _mapping(where, spec, " such as {type: float, low: 0.1, high: 10}")
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
        param = Param(key, t, choices=_choices(f"{where}.choices", spec["choices"]))
    else:
        if "choices" not in spec:
            raise SpaceError(f"{where}.choices: missing")
        choices = _blocks(f"{where}.choices", spec["choices"])
        always = _blocks(f"{where}.always", spec.get("always", []), allow_empty=True)
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
        raw = _mapping(where, raw, " of {other_param: [values]}")
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
                found, canon = _match(v, target.choices)
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


def _active(p: Param, values: dict[str, Any]) -> bool:
    return all(k in values and _match(values[k], allowed)[0] for k, allowed in p.when)


# --- points -----------------------------------------------------------------------------------------------


def _domain_value(p: Param, v: Any, where: str) -> Any:
    """A point's value for ``p``, checked against its domain and made canonical."""
    if p.type in ("float", "int"):
        v = _number(where, v, integer=p.type == "int")
        if not p.low <= v <= p.high:
            raise SpaceError(f"{where}: {v} is outside [{p.low}, {p.high}]")
        if p.step is not None and not _divisible(v - p.low, p.step):
            raise SpaceError(f"{where}: {v} is not on the grid low + k * step ({p.low} + k * {p.step})")
        return v
    if p.type == "categorical":
        found, canon = _match(v, p.choices)
        if not found:
            raise SpaceError(f"{where}: {v!r} is not one of {list(p.choices)}")
        return canon
    if not isinstance(v, list):  # subset
        raise SpaceError(f"{where}: expected a list of blocks, got {v!r}")
    for b in v:
        if not isinstance(b, str) or (b not in p.choices and b not in p.always):
            raise SpaceError(f"{where}: {b!r} is not one of {list(p.always + p.choices)}")
    return list(p.always) + [b for b in p.choices if b in v]


def _check_point(params: tuple[Param, ...], point: Any, where: str, base: dict[str, Any]) -> dict[str, Any]:
    point = _mapping(where, point, " of param keys to values")
    by_key = {p.key: p for p in params}
    for k in point:
        if k not in by_key:
            extra = " (it is fixed in base; points give values of params)" if k in base else ""
            raise SpaceError(f"{where}.{k}: not a param of this space{extra}")
    out: dict[str, Any] = {}
    for p in params:  # dependency order, so conditions see canonical values
        w = f"{where}.{p.key}"
        if not _active(p, out):
            if p.key in point:
                cond = ", ".join(f"{k} in {list(v)}" for k, v in p.when)
                raise SpaceError(f"{w}: given, but its condition ({cond}) does not hold in this point")
            continue
        if p.key not in point:
            raise SpaceError(f"{w}: missing; a point fixes every param whose condition holds")
        out[p.key] = _domain_value(p, point[p.key], w)
    return out


def _encode(params: tuple[Param, ...], checked: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in params:
        if p.key not in checked:
            continue
        if p.type == "subset":
            for b in p.choices:
                out[optuna_name(p, b)] = b in checked[p.key]
        else:
            out[optuna_name(p)] = checked[p.key]
    return out


# --- the deep check ---------------------------------------------------------------------------------------


def _build(where: str, overrides: dict[str, Any]) -> ecfg.Config:
    try:
        return ecfg.from_dict({}, overrides)
    except Exception as e:  # ConfigError, or whatever egomodel raises on a value it cannot take
        raise SpaceError(f"{where}: egomodel rejects it: {e}") from None


def _enabling(p: Param, by_key: dict[str, Param]) -> dict[str, Any]:
    """Values of the params that ``p``'s condition names (recursively) so that ``p`` is active."""
    out: dict[str, Any] = {}
    for other, allowed in p.when:
        out.update(_enabling(by_key[other], by_key))
        out[other] = allowed[0]
    return out


def _extremes(p: Param) -> list[tuple[str, Any]]:
    if p.type in ("float", "int"):
        return [("low", p.low), ("high", p.high)]
    if p.type == "categorical":
        return [(f"choice {c!r}", c) for c in p.choices]
    return [("always alone", list(p.always)), ("all choices", list(p.always + p.choices))]


def _deep_check(base: dict[str, Any], params: tuple[Param, ...], points: tuple[dict[str, Any], ...]) -> None:
    _build("base", base)
    by_key = {p.key: p for p in params}
    for p in params:
        enabling = _enabling(p, by_key)
        for label, value in _extremes(p):
            _build(f"params.{p.key} ({label})", {**base, **enabling, p.key: value})
    for i, point in enumerate(points):
        _build(f"points[{i}]", {**base, **point})


# --- loading ----------------------------------------------------------------------------------------------


def _int_at_least(where: str, v: Any, lowest: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lowest:
        raise SpaceError(f"{where}: expected an integer >= {lowest}, got {v!r}")
    return v


def _resources(v: Any) -> dict[str, float]:
    v = _mapping("resources", v, " such as {cpu: 1, gpu: 0.5}")
    out = dict(_DEFAULT_RESOURCES)
    for k, q in v.items():
        where = f"resources.{k}"
        if k not in RESOURCES:
            raise SpaceError(f"{where}: unknown resource (known: {', '.join(RESOURCES)})")
        q = _number(where, q)
        if q < 0:
            raise SpaceError(f"{where}: {q} must be >= 0")
        frac = (q - math.floor(q)) / _RESOURCE_PRECISION
        if abs(frac - round(frac)) > 1e-6:
            raise SpaceError(f"{where}: {q} is finer than Ray's resource precision {_RESOURCE_PRECISION}")
        if k == "gpu" and q > 1 and q != int(q):
            raise SpaceError(f"{where}: {q}: more than one GPU must be a whole number")
        out[k] = q
    return out


def _scheduler(v: Any) -> Scheduler:
    v = _mapping("scheduler", v, " such as {type: asha, grace_period: auto, reduction_factor: 2}")
    t = v.get("type", "asha")
    if t not in SCHEDULERS:
        raise SpaceError(f"scheduler.type: unknown scheduler {t!r} (known: {', '.join(SCHEDULERS)})")
    for f in v:
        if f not in _SCHEDULER_FIELDS[t]:
            raise SpaceError(
                f"scheduler.{f}: unknown field for the {t} scheduler (allowed: {', '.join(_SCHEDULER_FIELDS[t])})"
            )
    grace = v.get("grace_period", "auto")
    if grace == "auto":
        grace = None
    elif isinstance(grace, bool) or not isinstance(grace, int) or grace < 1:
        raise SpaceError(f'scheduler.grace_period: expected an integer >= 1 or "auto", got {grace!r}')
    factor = _number("scheduler.reduction_factor", v.get("reduction_factor", 2.0))
    if factor <= 1:
        raise SpaceError(f"scheduler.reduction_factor: {factor} must be > 1")
    return Scheduler(t, grace, factor)


def _base(v: Any, known: dict[str, Any]) -> dict[str, Any]:
    v = _mapping("base", {} if v is None else v, " of dotted egomodel keys to values")
    for k in v:
        if not isinstance(k, str) or k not in known:
            raise SpaceError(
                f"base.{k}: not an egomodel config key (use dotted keys such as model.alpha)"
                f"{_suggest(str(k), list(known))}"
            )
    return dict(v)


def _parse(data: Any, path: Path, text: str) -> SearchSpace:
    data = _mapping("space", data, " with keys such as metric, base, params")
    for k in data:
        if k not in TOP_KEYS:
            hint = _suggest(str(k), list(TOP_KEYS))
            raise SpaceError(f"{k}: unknown top-level key (known: {', '.join(TOP_KEYS)}){hint}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise SpaceError(f"name: expected a non-empty string, got {name!r}")
    description = data.get("description")
    description = "" if description is None else description
    if not isinstance(description, str):
        raise SpaceError(f"description: expected a string, got {description!r}")
    metric = data.get("metric", "val_top1")
    if not isinstance(metric, str) or not metric.strip():
        raise SpaceError(f"metric: expected a metric name (a string), got {metric!r}")
    mode = data.get("mode", "max")
    if mode not in MODES:
        raise SpaceError(f"mode: expected max or min, got {mode!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise SpaceError(f"seed: expected an integer in [0, 2**32), got {seed!r}")
    resources = _resources(data.get("resources", {}))
    scheduler = _scheduler(data.get("scheduler", {}))

    known = ecfg.known_keys()
    base = _base(data.get("base"), known)
    raw_params = data.get("params")
    if raw_params is None or raw_params == {}:
        raise SpaceError("params: missing or empty; a space needs at least one param to search")
    raw_params = _mapping("params", raw_params, " of dotted egomodel keys to param specs")
    plain: dict[str, Param] = {}
    raw_when: dict[str, Any] = {}
    for key, spec in raw_params.items():
        plain[key], raw_when[key] = _param(key, spec, known, base)
    params = _order(_conditions(plain, raw_when))

    raw_points = data.get("points") or []
    if not isinstance(raw_points, list):
        raise SpaceError(f"points: expected a list of mappings, got {raw_points!r}")
    points = tuple(_check_point(params, p, f"points[{i}]", base) for i, p in enumerate(raw_points))

    num_samples = _int_at_least("num_samples", data.get("num_samples", max(1, len(points))), 1)
    max_concurrent = _int_at_least("max_concurrent", data.get("max_concurrent", 1), 1)

    evaluate_test = _bool("evaluate_test", data.get("evaluate_test", False))
    interval = _number("checkpoint_interval_s", data.get("checkpoint_interval_s", DEFAULT_CHECKPOINT_INTERVAL_S))
    if interval < 0:
        raise SpaceError(f"checkpoint_interval_s: {interval} must be >= 0 (0: a checkpoint after every epoch)")
    _deep_check(base, params, points)
    return SearchSpace(
        evaluate_test=evaluate_test,
        checkpoint_interval_s=float(interval),
        plots=_bool("plots", data.get("plots", True)),
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


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load and fully validate a space: a shipped name (``smoke``) or a path to a YAML file."""
    path = _resolve(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"{path}: cannot read: {e}") from None
    data = _read_yaml(path, text)
    try:
        return _parse(data, path, text)
    except SpaceError as e:
        raise SpaceError(f"{path}: {e}") from None


# --- Optuna / Ray glue ------------------------------------------------------------------------------------


def optuna_name(param: Param, block: str | None = None) -> str:
    """The Optuna (and Ray config) name of a param, or of one block of a subset param."""
    if param.type == "subset":
        if block is None or block not in param.choices:
            raise ValueError(
                f"{param.key}: a subset param needs one of its blocks {list(param.choices)}, got {block!r}"
            )
        return f"{param.key}[{block}]"
    if block is not None:
        raise ValueError(f"{param.key}: only subset params take a block")
    return param.key


class DefineByRun:
    """Optuna define-by-run function for ``OptunaSearch(space=...)``: suggests each active param.

    A plain object (Ray pickles it with the searcher's state); it only calls ``trial.suggest_*``.
    Conditions are read from the values the suggestions return, since Ray hands in a wrapper of the
    trial that records those calls.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.params = space.params

    def __call__(self, trial: Any) -> None:
        values: dict[str, Any] = {}
        for p in self.params:
            if not _active(p, values):
                continue
            name = optuna_name(p) if p.type != "subset" else None
            if p.type == "float":
                values[p.key] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
            elif p.type == "int":
                values[p.key] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            elif p.type == "categorical":
                values[p.key] = trial.suggest_categorical(name, list(p.choices))
            else:
                for b in p.choices:
                    trial.suggest_categorical(optuna_name(p, b), [False, True])
        return None

    def __repr__(self) -> str:
        return f"DefineByRun({', '.join(p.key for p in self.params)})"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Undo Ray's un-flattening (on "/") and any dotted nesting: keys joined with "."."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}".replace("/", ".")
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def decode(space: SearchSpace, sampled: dict[str, Any]) -> dict[str, Any]:
    """Ray's trial config (Optuna names, flat or nested) -> dotted egomodel overrides.

    ``space.base`` plus every param whose condition held; a subset becomes ``always`` + the chosen
    blocks in choice order. Keys of ``sampled`` that are not this space's names are ignored.
    """
    flat = _flat(sampled)
    values: dict[str, Any] = {}
    out = dict(space.base)
    for p in space.params:
        if not _active(p, values):
            continue
        names = [optuna_name(p, b) for b in p.choices] if p.type == "subset" else [optuna_name(p)]
        missing = [n for n in names if n not in flat]
        if missing:
            raise SpaceError(f"{space.name}: the trial config lacks {missing[0]!r} (not sampled from this space?)")
        if p.type == "subset":
            out[p.key] = list(p.always) + [b for b in p.choices if flat[optuna_name(p, b)]]
        else:
            values[p.key] = out[p.key] = flat[names[0]]
    return out


def encode_point(space: SearchSpace, point: dict[str, Any]) -> dict[str, Any]:
    """A ``points:`` entry (dotted keys, subsets as lists) -> Optuna names for ``points_to_evaluate``."""
    return _encode(space.params, _check_point(space.params, point, "point", space.base))


def runtime_overrides(space: SearchSpace, data_root: str, seed: int) -> dict[str, Any]:
    """What the command line adds to every trial: the data root, and the training seed unless the
    space fixes or searches ``train.seed`` itself (repeated-seed spaces such as table3)."""
    out: dict[str, Any] = {"data.root": data_root}
    if "train.seed" not in space.base and all(p.key != "train.seed" for p in space.params):
        out["train.seed"] = seed
    return out


def trial_config(space: SearchSpace, sampled: dict[str, Any], extra: dict[str, Any] | None = None) -> ecfg.Config:
    """The egomodel config of one trial: base + decoded params + ``extra`` (e.g. data.root, device)."""
    try:
        return ecfg.from_dict({}, {**decode(space, sampled), **(extra or {})})
    except SpaceError:
        raise
    except (ValueError, TypeError, OverflowError) as e:
        raise SpaceError(f"{space.name}: trial config: {e}") from None


def resolve_grace_period(space: SearchSpace, cfg: ecfg.Config) -> int:
    """ASHA's grace period in epochs: as given, or "auto" = the first epoch after stage 1."""
    if space.scheduler.grace_period is not None:
        return space.scheduler.grace_period
    from egomodel.stages import scale_schedule  # imports torch; only the driver needs this

    s1 = cfg.train.stage1
    return scale_schedule(s1.epochs, s1.milestones, cfg.train.epochs_scale)[0] + 1
