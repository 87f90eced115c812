"""Checks against a space's parsed params: whether a param's condition holds, a ``points:`` entry, and the
deep check (egomodel builds a config from ``base``, from each param's extreme values and from each point).
"""

from __future__ import annotations

from typing import Any

from egomodel import config as ecfg
from tuning.space import fields
from tuning.space.errors import SpaceError
from tuning.space.types import Param

# --- conditions -------------------------------------------------------------------------------------------


def is_active(p: Param, values: dict[str, Any]) -> bool:
    return all(k in values and fields.match(values[k], allowed)[0] for k, allowed in p.when)


# --- points -----------------------------------------------------------------------------------------------


def _domain_value(p: Param, v: Any, where: str) -> Any:
    """A point's value for ``p``, checked against its domain and made canonical."""
    if p.type in ("float", "int"):
        v = fields.number(where, v, integer=p.type == "int")
        if not p.low <= v <= p.high:
            raise SpaceError(f"{where}: {v} is outside [{p.low}, {p.high}]")
        if p.step is not None and not fields.divisible(v - p.low, p.step):
            raise SpaceError(f"{where}: {v} is not on the grid low + k * step ({p.low} + k * {p.step})")
        return v
    if p.type == "categorical":
        found, canon = fields.match(v, p.choices)
        if not found:
            raise SpaceError(f"{where}: {v!r} is not one of {list(p.choices)}")
        return canon
    if not isinstance(v, list):  # subset
        raise SpaceError(f"{where}: expected a list of blocks, got {v!r}")
    for b in v:
        if not isinstance(b, str) or (b not in p.choices and b not in p.always):
            raise SpaceError(f"{where}: {b!r} is not one of {list(p.always + p.choices)}")
    return list(p.always) + [b for b in p.choices if b in v]


def check_point(params: tuple[Param, ...], point: Any, where: str, base: dict[str, Any]) -> dict[str, Any]:
    point = fields.mapping(where, point, " of param keys to values")
    by_key = {p.key: p for p in params}
    for k in point:
        if k not in by_key:
            extra = " (it is fixed in base; points give values of params)" if k in base else ""
            raise SpaceError(f"{where}.{k}: not a param of this space{extra}")
    out: dict[str, Any] = {}
    for p in params:  # dependency order, so conditions see canonical values
        w = f"{where}.{p.key}"
        if not is_active(p, out):
            if p.key in point:
                cond = ", ".join(f"{k} in {list(v)}" for k, v in p.when)
                raise SpaceError(f"{w}: given, but its condition ({cond}) does not hold in this point")
            continue
        if p.key not in point:
            raise SpaceError(f"{w}: missing; a point fixes every param whose condition holds")
        out[p.key] = _domain_value(p, point[p.key], w)
    return out


# --- the deep check ---------------------------------------------------------------------------------------


def _build(where: str, overrides: dict[str, Any]) -> ecfg.Config:
    from egomodel.training.stages import stage_plan  # imports torch: only where a space is checked

    try:
        cfg = ecfg.from_dict({}, overrides)
        stage_plan(cfg.model.variant, cfg.train)  # what the stages need (e.g. stage 3 trains the feedback)
        return cfg
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


def deep_check(base: dict[str, Any], params: tuple[Param, ...], points: tuple[dict[str, Any], ...]) -> None:
    _build("base", base)
    by_key = {p.key: p for p in params}
    for p in params:
        enabling = _enabling(p, by_key)
        for label, value in _extremes(p):
            _build(f"params.{p.key} ({label})", {**base, **enabling, p.key: value})
    for i, point in enumerate(points):
        _build(f"points[{i}]", {**base, **point})
