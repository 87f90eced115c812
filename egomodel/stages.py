"""Training stages as data (DESIGN §5) and the one function that applies a stage to a model."""

from __future__ import annotations

from dataclasses import dataclass

from egomodel.config import StageConfig, TrainConfig
from egomodel.model.network import EgoRNN

# which stages each variant runs: Ego-RNN's two stages, plus the feedback stage for the paper's model
VARIANT_STAGES = {"convlstm": (1, 2), "attention": (1, 2), "ms": (1, 2), "feedback": (1, 2, 3)}


@dataclass(frozen=True)
class Stage:
    number: int
    epochs: int
    lr: float
    milestones: tuple[int, ...]
    gamma: float
    batch_size: int
    trainable: tuple[str, ...]


def scale_schedule(epochs: int, milestones: list[int], factor: float) -> tuple[int, tuple[int, ...]]:
    """Scale epochs and milestones by ``factor``; at least one epoch, milestones inside the run."""
    n = max(1, round(epochs * factor))
    scaled = sorted({max(1, round(m * factor)) for m in milestones})
    return n, tuple(m for m in scaled if m < n)


def stage_plan(variant: str, train: TrainConfig) -> list[Stage]:
    plan = []
    for number in VARIANT_STAGES[variant]:
        s: StageConfig = getattr(train, f"stage{number}")
        epochs, milestones = scale_schedule(s.epochs, s.milestones, train.epochs_scale)
        plan.append(Stage(number, epochs, s.lr, milestones, s.gamma, s.batch_size, tuple(s.trainable)))
    return plan


def apply_stage(model: EgoRNN, trainable: tuple[str, ...] | list[str]) -> list[str]:
    """Make exactly the named blocks trainable, keep every other block (and its BN) in eval.

    Blocks a variant does not have (e.g. ``ms_head`` for ``attention``) are skipped; the names that
    applied are returned. The feedback branch runs from the stage that trains it onwards.
    """
    blocks = model.blocks()
    active = [b for b in trainable if b in blocks]
    for p in model.parameters():
        p.requires_grad_(False)
    for name in active:
        for p in blocks[name]:
            p.requires_grad_(True)
    modules = model.block_modules()
    frozen = [m for name, ms in modules.items() if name not in active for m in ms]
    if "feedback" in active:
        model.feedback_on.fill_(True)
    model.set_frozen_modules(frozen)
    return active
