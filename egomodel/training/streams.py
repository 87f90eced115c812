"""Two-stream training from its streams: where each stream's trained checkpoint comes from (a path in
the config, or a search's stage store, training the stream there if it is missing), and loading them.

A missing stream is trained as a run of its own by the ``train`` function the engine hands in, so this
module never imports the engine back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from egomodel.config import Config, ConfigError, from_dict
from egomodel.data.dataset import DataBundle
from egomodel.model import TwoStream
from egomodel.model import checkpoint as ck
from egomodel.training.stage_keys import StageStore
from egomodel.training.stages import stage_plan

STREAMS = {"flow": "model.flow_checkpoint", "attention": "model.rgb_checkpoint"}  # two_stream's inputs


def stream_sources(cfg: Config, store: StageStore | None) -> dict[str, Path | None]:
    """Each stream's checkpoint path, or None where a search's stage store provides it. Checked up front."""
    out: dict[str, Path | None] = {}
    for variant, key in STREAMS.items():
        given = getattr(cfg.model, key.split(".")[1])
        if given:
            if not Path(given).is_file():
                raise ConfigError(f"{key}: {given} does not exist (a trained {variant} model's checkpoint)")
            out[variant] = Path(given)
        elif store is None:
            raise ConfigError(
                f"{key} is not set: model.variant=two_stream needs trained streams, a {variant} checkpoint "
                f"in {key} (e.g. runs/{variant}/checkpoints/stage{len(stage_plan(variant, cfg.train))}_best.pt), "
                "or a search's stage store to take them from"
            )
        else:
            out[variant] = None
    return out


def load_streams(model: TwoStream, cfg: Config, out: Path, bundle: DataBundle, sources: dict[str, Path | None],
                  store: StageStore | None, owner: str, progress: bool, train: Callable[..., dict[str, Any]]) -> None:
    """Load the trained flow and attention streams, training a missing one first with ``train`` (the
    engine's own, shared through the store)."""
    states = {}
    for variant, path in sources.items():
        if path is None:  # the stream as its own run would train it, with this config's shared settings
            sub_cfg = from_dict(cfg.to_dict(), {"model.variant": variant})
            sub = out / "streams" / variant
            tqdm.write(f"two_stream: {variant} stream from the stage store (trained here if missing)")
            sub_resume = (sub / "checkpoints" / ck.LAST).is_file()
            path = Path(train(sub_cfg, sub, resume=sub_resume, evaluate_test=False, progress=progress,
                              store=store, owner=owner)["best_checkpoint"])
        ckpt = ck.load(path)
        if ckpt["config"]["model"]["variant"] != variant or list(ckpt["classes"]) != bundle.classes:
            raise ConfigError(
                f"{STREAMS[variant]}: {path} holds a {ckpt['config']['model']['variant']} model over "
                f"{len(ckpt['classes'])} classes; two_stream needs a {variant} model over these {len(bundle.classes)}"
            )
        states[variant] = ckpt["model"]
    try:
        model.load_streams(states["attention"], states["flow"])
    except RuntimeError as e:
        raise ConfigError(f"the stream checkpoints do not fit this two_stream config: {e}") from None
