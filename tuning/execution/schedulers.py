"""What the rung schedulers need besides their rule (``tuning.execution.moasha``): which stored stage
prefix a trial's result comes from, and their rung tables carried across ``--resume``.

Ray 2.60 saves no scheduler with a search: ``Tuner.restore`` unpickles the one given to the ``Tuner`` before
``fit()``, with empty rungs, so a resumed trial would be recorded at every lower rung again on its next
epochs. :class:`RungStateCallback` is a Tune callback whose state (saved with the search's experiment state,
restored before any trial runs again) is the scheduler's rung tables. The callback holds the scheduler
itself: both are pickled together in the ``Tuner``'s saved state, so a restored callback feeds the restored
scheduler.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from tuning.space.types import SearchSpace


class StagePrefix:
    """A trial's configuration at one of its stages: (the stage's name in its variant's plan, the key of the
    stored stage prefix it computes there). Two trials with one key there have the same results there."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self._cache: dict[tuple, tuple[str, str]] = {}

    def __call__(self, config: dict, stage: int) -> tuple[str, str]:
        key = (tuple(sorted((k, repr(v)) for k, v in config.items())), stage)
        if key not in self._cache:
            from egomodel.training.stage_keys import LATER_KEYS, stage_key
            from egomodel.training.stages import VARIANT_STAGES
            from tuning.space.sampling import trial_config

            cfg = trial_config(self.space, config)
            names = VARIANT_STAGES[cfg.model.variant]
            name = names[stage - 1] if 1 <= stage <= len(names) else f"stage{stage}"
            prefix = stage_key(cfg, "", stage) if stage in LATER_KEYS else repr(key)
            self._cache[key] = (name, prefix)
        return self._cache[key]

    def __getstate__(self) -> dict[str, Any]:
        return {"space": self.space, "_cache": {}}


def rung_state(scheduler: TrialScheduler) -> dict[str, Any] | None:
    """The scheduler's rung tables (None for a scheduler without rungs)."""
    if hasattr(scheduler, "state"):
        return {"rungs": scheduler.state()}
    if isinstance(scheduler, AsyncHyperBandScheduler):  # Ray's ASHA: each bracket's (rung, recorded) pairs
        return {"asha": [[(r, dict(rec)) for r, rec in b._rungs] for b in scheduler._brackets],
                "stopped": scheduler._num_stopped}
    return None


def load_rung_state(scheduler: TrialScheduler, state: dict[str, Any]) -> None:
    if "rungs" in state and hasattr(scheduler, "load_state"):
        scheduler.load_state(state["rungs"])
    elif "asha" in state and isinstance(scheduler, AsyncHyperBandScheduler):
        for bracket, rungs in zip(scheduler._brackets, state["asha"]):
            bracket._rungs = [(r, dict(rec)) for r, rec in rungs]
        scheduler._num_stopped = state["stopped"]


class RungStateCallback(Callback):
    """Saves the scheduler's rung tables with the search and puts them back on ``--resume``."""

    def __init__(self, scheduler: TrialScheduler) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        return rung_state(self.scheduler)

    def set_state(self, state: dict[str, Any]) -> None:
        load_rung_state(self.scheduler, state)


def state_callbacks(scheduler: TrialScheduler) -> list[Callback]:
    """The callbacks a search adds for its scheduler: one keeping its rungs, none for FIFO."""
    return [RungStateCallback(scheduler)] if rung_state(scheduler) is not None else []
