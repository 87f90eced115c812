"""``--set key=value`` on a search: a change to a space without copying its YAML.

One rule says where a key goes: a key whose first part is one of :data:`SPACE_KEYS` changes the space's own
setting (``resources.gpu=0.25``, ``num_samples=8``, ``scheduler.reduction_factor=3``); any other key is an
egomodel config key and changes the space's ``base`` (``train.epochs_scale=0.1``). A key the space searches
in ``params``, another top-level key of the space, ``data.root`` (``--data`` says it) or an unknown key is
refused, naming it. The loader (:func:`tuning.space.load.load_space`) then validates the changed space in
full, as if the YAML said so.
"""

from __future__ import annotations

import json
from typing import Any

from egomodel import config as ecfg
from tuning.space import fields
from tuning.space.errors import SpaceError
from tuning.space.types import SCHEDULER_FIELDS

# top-level space settings --set may change (resources.cpu, scheduler.rungs, ...): how a search runs,
# never what it searches
SPACE_KEYS = ("resources", "num_samples", "max_concurrent", "scheduler", "checkpoint_interval_s")
_SECTIONS = ("resources", "scheduler")  # set one field at a time: resources.gpu, scheduler.type
RUNTIME = {"data.root": "--data"}  # set by a search's own flag
OVERRIDES_PARAM = "overrides"  # the parent MLflow run's param (and the search's record): --set as JSON


def split(data: Any, overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The space's YAML data with its own settings changed, and the egomodel keys for its ``base``."""
    if not overrides:
        return data, {}
    data = dict(fields.mapping("space", data, " with keys such as metric, base, params"))
    params = data.get("params") if isinstance(data.get("params"), dict) else {}
    known = ecfg.known_keys()
    base: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, field = key.partition(".")
        if head in SPACE_KEYS:
            if (head in _SECTIONS) != bool(field):
                form = f"{head}.FIELD" if head in _SECTIONS else head
                raise SpaceError(f"--set {key}: expected {form}=VALUE")
            if head == "scheduler" and field == "type":
                # another type: the space's fields of its own scheduler go (fifo takes no rungs), those set here stay
                kept = {f: v for f, v in fields.mapping(head, data.get(head) or {}, "").items()
                        if f in SCHEDULER_FIELDS.get(value, ()) or f"scheduler.{f}" in overrides}
                data[head] = kept
            if field:
                section = data.get(head) or {}
                data[head] = {**fields.mapping(head, section, ""), field: value}
            else:
                data[head] = value
        elif key in RUNTIME:
            raise SpaceError(f"--set {key}: set by the search itself; use {RUNTIME[key]}")
        elif key in params:
            raise SpaceError(f"--set {key}: this space searches it (params.{key}); a key is either fixed or "
                             "searched: edit a copy of the space to fix it")
        elif key in known:
            base[key] = value
        else:
            raise SpaceError(
                f"--set {key}: not an egomodel config key nor a space setting that --set can change "
                f"({', '.join(f'{k}.FIELD' if k in _SECTIONS else k for k in SPACE_KEYS)})"
                f"{fields.suggestion(key, [*known, *SPACE_KEYS])}")
    return data, base


def describe(overrides: dict[str, Any]) -> str:
    """The overrides as recorded on the search (a JSON object, keys sorted): ``{}`` for none."""
    return json.dumps(overrides, sort_keys=True, default=str)


def difference(recorded: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """What ``given`` changes against ``recorded``, one ``key: recorded -> given`` per key."""
    missing = object()
    out = []
    for key in sorted(set(recorded) | set(given)):
        a, b = recorded.get(key, missing), given.get(key, missing)
        if a != b:
            out.append(f"{key}: {'(not set)' if a is missing else a} -> {'(not set)' if b is missing else b}")
    return out
