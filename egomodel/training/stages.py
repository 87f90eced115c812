"""Training stages as data (docs/design.md §5) and the one function that applies a stage to a model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from egomodel.config import ConfigError, StageConfig, TrainConfig
from egomodel.model.staged import StagedModel

# which stages each variant runs (their TrainConfig fields): Ego-RNN's two stages, the feedback stage
# for the paper's model; the flow stream and the two-stream model train in one stage of their own
VARIANT_STAGES = {
    "convlstm": ("stage1", "stage2"), "attention": ("stage1", "stage2"), "ms": ("stage1", "stage2"),
    "feedback": ("stage1", "stage2", "stage3"), "flow": ("flow",), "two_stream": ("two_stream",),
}


@dataclass(frozen=True)
class Stage:
    number: int
    epochs: int
    lr: float
    milestones: tuple[int, ...]
    gamma: float
    batch_size: int
    trainable: tuple[str, ...]
    optimizer: str = "adam"
    weight_decay: float = 4e-5
    momentum: float = 0.9
    scheduler: str = "multistep"
    slow_blocks: tuple[str, ...] = ()
    slow_lr: float = 1e-4
    name: str = ""  # the TrainConfig field it comes from
    # block names of the stage's default list (e.g. ``ms_head`` in stage 2): skipped where the variant
    # lacks them; any other name the variant lacks is an error
    optional: tuple[str, ...] = ()

    def optimizer_for(self, model: StagedModel, eps: float) -> torch.optim.Optimizer:
        """Adam or SGD over the parameters that train; ``slow_blocks`` in a group at ``slow_lr``."""
        blocks = model.blocks()
        slow = {id(p) for b in self.slow_blocks if b in blocks for p in blocks[b]}
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in slow], "lr": self.lr}]
        if slow:
            groups.append({"params": [p for p in trainable if id(p) in slow], "lr": self.slow_lr})
        if self.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.Adam(groups, lr=self.lr, weight_decay=self.weight_decay, eps=eps)

    def scheduler_for(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        if self.scheduler == "exponential":
            return torch.optim.lr_scheduler.ExponentialLR(opt, self.gamma)
        return torch.optim.lr_scheduler.MultiStepLR(opt, list(self.milestones), self.gamma)


def scale_schedule(epochs: int, milestones: list[int], factor: float) -> tuple[int, tuple[int, ...]]:
    """Scale epochs and milestones by ``factor``: at least one epoch, milestones inside the run.

    Milestones that round to the same epoch are not merged: a collision moves to the next free epoch,
    so a stage keeps as many distinct learning-rate decays as it has epochs for (a milestone must be
    below the stage's epoch count to act)."""
    n = max(1, round(epochs * factor))
    out: list[int] = []
    for m in sorted(milestones):
        at = max(1, round(m * factor), out[-1] + 1 if out else 1)
        if at >= n:
            break
        out.append(at)
    return n, tuple(out)


def _default_trainable(name: str) -> tuple[str, ...]:
    return tuple(getattr(TrainConfig(), name).trainable)


def stage_plan(variant: str, train: TrainConfig) -> list[Stage]:
    """The variant's stages, scaled by ``train.epochs_scale``.

    The feedback variant's stage 3 must train the feedback branch: the branch runs from the stage that
    trains it, so without ``feedback`` in ``train.stage3.trainable`` stage 3 would silently train the
    model without it (a ``ConfigError`` naming the key)."""
    plan = []
    for number, name in enumerate(VARIANT_STAGES[variant], 1):
        s: StageConfig = getattr(train, name)
        if variant == "feedback" and name == "stage3" and "feedback" not in s.trainable:
            raise ConfigError(
                f"train.stage3.trainable: {list(s.trainable)} lacks 'feedback'; the feedback variant's stage 3 "
                "trains the feedback branch (without it the branch would never run); add 'feedback'")
        epochs, milestones = scale_schedule(s.epochs, s.milestones, train.epochs_scale)
        plan.append(Stage(number, epochs, s.lr, milestones, s.gamma, s.batch_size, tuple(s.trainable),
                          s.optimizer, s.weight_decay, s.momentum, s.scheduler, tuple(s.slow_blocks), s.slow_lr,
                          name, _default_trainable(name)))
    return plan


def check_blocks(model: StagedModel, plan: list[Stage]) -> None:
    """Every block name a stage's list sets must exist in the model, except the names of the stage's
    default list (stage 2's ``ms_head`` for ``attention``): a ``ConfigError`` naming the key."""
    blocks = model.blocks()
    for stage in plan:
        unknown = [b for b in stage.trainable if b not in blocks and b not in stage.optional]
        if unknown:
            raise ConfigError(
                f"train.{stage.name or f'stage{stage.number}'}.trainable: {unknown} not in this variant's "
                f"model (its blocks: {', '.join(blocks)})")


def apply_stage(model: StagedModel, trainable: tuple[str, ...] | list[str],
                optional: tuple[str, ...] = ()) -> list[str]:
    """Make exactly the named blocks trainable, keep every other block (and its BN) in eval.

    A name the model lacks is an error (``ValueError``) unless it is in ``optional`` (a stage's default
    list, e.g. ``ms_head`` for ``attention``), where it is skipped; the names that applied are
    returned. The feedback branch runs from the stage that trains it onwards.
    """
    blocks = model.blocks()
    unknown = [b for b in trainable if b not in blocks and b not in optional]
    if unknown:
        raise ValueError(f"blocks {unknown} are not in this model (its blocks: {', '.join(blocks)})")
    active = [b for b in trainable if b in blocks]
    for p in model.parameters():
        p.requires_grad_(False)
    for name in active:
        for p in blocks[name]:
            p.requires_grad_(True)
    modules = model.block_modules()
    frozen = [m for name, ms in modules.items() if name not in active for m in ms]
    if "feedback" in active and hasattr(model, "feedback_on"):
        model.feedback_on.fill_(True)
    model.set_frozen_modules(frozen)
    return active
