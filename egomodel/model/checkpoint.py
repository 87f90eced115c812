"""Self-describing checkpoints: model, optimiser, scheduler, config, classes, stage, epoch, best
metric, history and RNG state. Loaded with ``weights_only=True``: only tensors and plain types."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from egomodel.config import Config, from_dict
from egomodel.model import StagedModel
from egomodel.model import build_model as build_network

FORMAT = 1
LAST = "last.pt"


def best_name(stage: int) -> str:
    return f"stage{stage}_best.pt"


def rng_state() -> dict[str, Any]:
    """The random generators a resume must continue: the CPU generator and, where CUDA is in use, each
    CUDA device's (dropout and augmentation on the GPU draw from those, not from the CPU's)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"rng": torch.get_rng_state(), "cuda_rng": list(cuda)}


def restore_rng(state: dict[str, Any]) -> None:
    """Set the generators :func:`rng_state` saved. A checkpoint written with CUDA restores each device's
    generator when CUDA is here (devices beyond the ones present are left alone); one written on a CPU
    (or before CUDA states were saved) restores the CPU generator only."""
    torch.set_rng_state(state["rng"])
    cuda = state.get("cuda_rng") or []
    if cuda and torch.cuda.is_available():
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def save(path: Path, payload: dict[str, Any]) -> Path:
    """Atomic write: a crash mid-save never leaves a truncated checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt or not a checkpoint
        raise ValueError(f"checkpoint {path} cannot be read: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise ValueError(f"{path} is not an egomodel checkpoint (format {FORMAT})")
    return ckpt


def build_model(ckpt: dict[str, Any]) -> tuple[StagedModel, Config, list[str]]:
    """Rebuild the network a checkpoint was saved from and load its weights (no weight download)."""
    cfg = from_dict(ckpt["config"], {"model.pretrained": "none"})
    classes = list(ckpt["classes"])
    model = build_network(cfg, len(classes))
    model.load_state_dict(ckpt["model"])
    return model, cfg, classes


def load_model(path: str | Path) -> tuple[StagedModel, Config, list[str]]:
    model, cfg, classes = build_model(load(path))
    model.eval()
    return model, cfg, classes
