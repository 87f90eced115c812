"""What each stage's result depends on, so trials can share identical stage prefixes.

Stage n's result is a function of the config keys that stages 1..n read, the data, the seed and the
code. :func:`stage_key` hashes exactly those; :func:`shared_state` keeps the weights that key
determines (stage 1 does not touch the MS head or the feedback branch, whose shapes depend on
later-stage keys, so they are left out of a stored stage-1 result).

The store itself is injected into the engine (``StageStore``); ``tuning.execution.stage_store``
implements it on a local path or a cloud URI.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import torch

from egomodel.config import Config, flatten

# runtime settings that never change a result
RUNTIME_KEYS = ("data.root", "data.num_workers", "data.decoded_cache", "data.packed_cache", "train.device")
# keys only later stages read: left out of earlier stages' keys
LATER_KEYS = {
    1: ("model.alpha", "model.tau", "model.ms_task", "model.insertion", "model.feedback_channels",
        "train.stage2.", "train.stage3."),
    2: ("model.insertion", "model.feedback_channels", "train.stage3."),
    3: (),
}
# modules whose shapes or values depend on LATER_KEYS: not part of a stored result of that stage
LATER_MODULES = {1: ("ms_head.", "feedback.", "feedback_on"), 2: ("feedback.", "feedback_on"), 3: ()}
SOURCE = Path(__file__).resolve().parents[1]  # the whole egomodel package, whose code a stage result depends on


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of egomodel's source: a change to the code invalidates stored stages."""
    h = hashlib.sha256()
    for f in sorted(SOURCE.rglob("*.py")):
        h.update(f.relative_to(SOURCE).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


# keys a variant never reads: left out of its stage keys, so changing them shares its stages
_TWO_STREAM_KEYS = ("train.two_stream.", "model.flow_checkpoint", "model.rgb_checkpoint", "model.fusion_dropout")
UNREAD_KEYS = {
    **{v: _TWO_STREAM_KEYS + ("train.flow.", "data.flow_stack", "data.flow_segments")
       for v in ("convlstm", "attention", "ms", "feedback")},
    "flow": _TWO_STREAM_KEYS + ("train.stage1.", "train.stage2.", "train.stage3.", "model.alpha", "model.tau",
                                "model.ms_task", "model.insertion", "model.feedback_channels", "model.hidden",
                                "data.frames", "data.mmap_reach", "train.stage1_views"),
    "two_stream": (),
}


def _variant_family(variant: str, stage: int) -> str:
    """Variants that compute the same thing up to this stage share it."""
    if variant not in ("attention", "ms", "feedback"):
        return variant
    if stage == 1:
        return "attention"  # attention, ms and feedback train the same blocks the same way in stage 1
    if stage == 2 and variant in ("ms", "feedback"):
        return "ms"  # the feedback branch only runs from stage 3
    return variant


def stage_key(cfg: Config, fingerprint: str, stage: int) -> str:
    flat = flatten(cfg.to_dict())
    later = LATER_KEYS[stage]
    skip = later + UNREAD_KEYS[cfg.model.variant]
    relevant = {k: v for k, v in flat.items() if k not in RUNTIME_KEYS and not k.startswith(skip)}
    relevant["model.variant"] = _variant_family(cfg.model.variant, stage)
    blob = json.dumps({"stage": stage, "config": relevant, "data": fingerprint, "code": code_version()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def shared_state(state: dict[str, torch.Tensor], stage: int) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(LATER_MODULES[stage])}


class StageStore(Protocol):
    """Content-addressed stage results with a lease, so a prefix is computed once."""

    def get_or_claim(self, key: str, owner: str) -> Path | None:
        """A local copy of the stored result (the caller may delete it), or None: the caller now holds
        the lease and computes."""

    def put(self, key: str, payload: dict[str, Any]) -> None:
        """Store the result (verified on read) and release the lease."""

    def release(self, key: str) -> None:
        """Give the lease up without a result (the computation failed)."""


def first_stage_reading(key: str, stages: list[int]) -> int:
    """The first of ``stages`` (stage numbers, in order) whose result depends on the config key ``key``:
    the one after which no stage leaves it out (``model.alpha`` acts from stage 2, ``train.stage3.lr``
    from stage 3). A key no listed stage reads gives the last stage."""
    for n in stages:
        if not key.startswith(LATER_KEYS.get(n, ())):
            return n
    return stages[-1]
