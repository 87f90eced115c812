"""Checks of single fields of a search space (numbers, flags, mappings, choices, blocks, resources, base).

Each takes the dotted place of the value (``where``, e.g. ``params.model.alpha.low``) and raises a
``SpaceError`` that names it; none needs the rest of the space.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from egomodel import config as ecfg
from tuning.space.errors import SpaceError

RESOURCES = ("cpu", "gpu")
_DEFAULT_RESOURCES = {"cpu": 1.0, "gpu": 0.0}
_RESOURCE_PRECISION = 1e-4  # Ray rejects finer fractions


# --- small checks -----------------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number(where: str, v: Any, *, integer: bool = False) -> float | int:
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


def boolean(where: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise SpaceError(f"{where}: expected true or false, got {v!r}")
    return v


def mapping(where: str, v: Any, hint: str = "") -> dict[Any, Any]:
    if not isinstance(v, dict):
        raise SpaceError(f"{where}: expected a mapping{hint}, got {v!r}")
    return v


def suggestion(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps true/1 and "1"/1 apart (YAML scalars)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b


def match(value: Any, choices: tuple) -> tuple[bool, Any]:
    """(found, the canonical choice) for a categorical value."""
    for c in choices:
        if _same(value, c):
            return True, c
    return False, None


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v))


# --- param specs ------------------------------------------------------------------------------------------


def bounds(where: str, spec: dict[str, Any], integer: bool) -> tuple[Any, Any]:
    for f in ("low", "high"):
        if f not in spec:
            raise SpaceError(f"{where}.{f}: missing (a {spec['type']} param needs low and high)")
    low = number(f"{where}.low", spec["low"], integer=integer)
    high = number(f"{where}.high", spec["high"], integer=integer)
    if low >= high:
        raise SpaceError(f"{where}.low: {low} must be < high ({high})")
    return low, high


def divisible(span: float, step: float) -> bool:
    q = span / step
    if not math.isfinite(q):
        return False
    return abs(q - round(q)) <= 1e-9 * max(1.0, abs(q))



def choices(where: str, v: Any, *, allow_empty: bool = False) -> tuple:
    if not isinstance(v, list) or (not v and not allow_empty):
        raise SpaceError(f"{where}: expected a non-empty list, got {v!r}")
    out: list[Any] = []
    for i, c in enumerate(v):
        if not _is_scalar(c):
            raise SpaceError(f"{where}[{i}]: a choice must be a string, number, true/false or null, got {c!r}")
        if match(c, tuple(out))[0]:
            raise SpaceError(f"{where}[{i}]: duplicate choice {c!r}")
        out.append(c)
    return tuple(out)


def blocks(where: str, v: Any, *, allow_empty: bool = False) -> tuple[str, ...]:
    out = choices(where, v, allow_empty=allow_empty)
    for i, b in enumerate(out):
        if b not in ecfg.BLOCKS:
            raise SpaceError(f"{where}[{i}]: {b!r} is not an egomodel block (known: {', '.join(ecfg.BLOCKS)})")
    return out


# --- top-level fields -------------------------------------------------------------------------------------


def int_at_least(where: str, v: Any, lowest: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lowest:
        raise SpaceError(f"{where}: expected an integer >= {lowest}, got {v!r}")
    return v


def resources(v: Any) -> dict[str, float]:
    v = mapping("resources", v, " such as {cpu: 1, gpu: 0.5}")
    out = dict(_DEFAULT_RESOURCES)
    for k, q in v.items():
        where = f"resources.{k}"
        if k not in RESOURCES:
            raise SpaceError(f"{where}: unknown resource (known: {', '.join(RESOURCES)})")
        q = number(where, q)
        if q < 0:
            raise SpaceError(f"{where}: {q} must be >= 0")
        frac = (q - math.floor(q)) / _RESOURCE_PRECISION
        if abs(frac - round(frac)) > 1e-6:
            raise SpaceError(f"{where}: {q} is finer than Ray's resource precision {_RESOURCE_PRECISION}")
        if k == "gpu" and q > 1 and q != int(q):
            raise SpaceError(f"{where}: {q}: more than one GPU must be a whole number")
        out[k] = q
    return out


def base(v: Any, known: dict[str, Any]) -> dict[str, Any]:
    """``base`` as dotted keys; nested sections (``model: {alpha: 1}``, a run's ``config.yaml``) are the same."""
    v = ecfg.flatten(mapping("base", {} if v is None else v, " of egomodel keys (dotted or nested) to values"))
    for k in v:
        if not isinstance(k, str) or k not in known:
            raise SpaceError(
                f"base.{k}: not an egomodel config key (use dotted keys such as model.alpha)"
                f"{suggestion(str(k), list(known))}"
            )
    return dict(v)
