"""The Optuna / Ray side of a search space: Optuna names, the define-by-run sampler, decoding a sampled
trial config into egomodel overrides (and a ``points:`` entry into Optuna names), and the per-trial config.

Optuna names are the dotted egomodel keys (``model.alpha``); a subset of blocks becomes one boolean
categorical per block (``train.stage3.trainable[conv1]``). No name contains ``/``, the separator on
which Ray's ``OptunaSearch`` un-flattens a sampled config.
"""

from __future__ import annotations

from typing import Any

from egomodel import config as ecfg
from tuning.space.checks import check_point, is_active
from tuning.space.errors import SpaceError
from tuning.space.types import Param, SearchSpace


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
            if not is_active(p, values):
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
        if not is_active(p, values):
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


def encode_point(space: SearchSpace, point: dict[str, Any]) -> dict[str, Any]:
    """A ``points:`` entry (dotted keys, subsets as lists) -> Optuna names for ``points_to_evaluate``."""
    return _encode(space.params, check_point(space.params, point, "point", space.base))


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
