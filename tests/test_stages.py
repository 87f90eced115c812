"""Trial-level training details that change what a trial measures: scaled schedules keep their decays,
the feedback stage trains the branch, unknown blocks are errors, resumes restore every generator, and a
last batch of one clip trains."""

from __future__ import annotations

import pytest
import torch

from egomodel.config import ConfigError, ModelConfig, TrainConfig, from_dict
from egomodel.model import EgoRNN
from egomodel.model import checkpoint as ck
from egomodel.training.stages import apply_stage, check_blocks, scale_schedule, stage_plan
from egomodel.training.steps import train_epoch


@pytest.mark.parametrize(("epochs", "milestones", "factor", "expected"), [
    (1000, [25, 75, 150], 0.01, (10, (1, 2, 3))),  # 0.25, 0.75 and 1.5 round to 1, 1, 2: shifted, not merged
    (300, [25, 75, 150], 0.01, (3, (1, 2))),  # only epochs 1 and 2 can decay a 3-epoch stage
    (150, [25, 75], 1.0, (150, (25, 75))),
    (200, [50, 100, 150], 0.02, (4, (1, 2, 3))),
    (10, [3, 20], 1.0, (10, (3,))),  # a milestone past the stage never acts
])
def test_scaled_milestones_stay_distinct(epochs, milestones, factor, expected):
    assert scale_schedule(epochs, milestones, factor) == expected


def test_feedback_stage_without_the_branch_is_an_error():
    cfg = from_dict({}, {"model.variant": "feedback", "train.stage3.trainable": ["convlstm", "classifier", "conv1"]})
    with pytest.raises(ConfigError, match=r"train\.stage3\.trainable.*'feedback'"):
        stage_plan("feedback", cfg.train)
    assert [s.number for s in stage_plan("ms", cfg.train)] == [1, 2]  # no stage 3: nothing to check


def test_a_space_whose_stage3_can_lack_feedback_fails_at_load(tmp_path):
    from tuning.space import SpaceError, load_space

    path = tmp_path / "s.yaml"
    path.write_text("base: {model.variant: feedback}\nparams:\n  train.stage3.trainable:\n    type: subset\n"
                    "    choices: [feedback, conv1]\n    always: [convlstm, classifier]\n")
    with pytest.raises(SpaceError, match=r"always alone.*train\.stage3\.trainable.*'feedback'"):
        load_space(path)


def _model(variant: str, size: int = 64) -> EgoRNN:
    torch.manual_seed(0)
    return EgoRNN(ModelConfig(variant=variant, pretrained="none", hidden=16), 4, size)


def test_unknown_blocks_are_errors_only_where_the_user_named_them():
    model = _model("attention")
    plan = stage_plan("attention", TrainConfig())
    assert "ms_head" in plan[1].trainable  # stage 2's default list names the MS head, which attention lacks
    check_blocks(model, plan)
    assert "ms_head" not in apply_stage(model, plan[1].trainable, plan[1].optional)
    user = from_dict({}, {"model.variant": "attention", "train.stage2.trainable": ["convlstm", "feedback"]})
    with pytest.raises(ConfigError, match=r"train\.stage2\.trainable: \['feedback'\]"):
        check_blocks(model, stage_plan("attention", user.train))
    with pytest.raises(ValueError, match=r"\['feedback'\] are not in this model"):
        apply_stage(model, ["convlstm", "feedback"])


def _draws() -> list[torch.Tensor]:
    out = [torch.rand(3)]
    if torch.cuda.is_available():
        out.append(torch.rand(3, device="cuda").cpu())
    return out


def test_checkpoints_carry_every_generator(tmp_path):
    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")  # CUDA in use, as in a GPU run
    state = ck.rng_state()
    assert set(state) == {"rng", "cuda_rng"}
    assert len(state["cuda_rng"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    ck.save(tmp_path / "x.pt", {"model": {}, **state})
    first = _draws()
    ck.restore_rng(ck.load(tmp_path / "x.pt"))  # a saved checkpoint loads with weights_only
    again = _draws()
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_a_last_batch_of_one_clip_trains_in_stage3_at_32_px():
    model = _model("feedback", size=32)  # layer4 is 1x1 at 32 px: one clip gives BN one value per channel
    (stage3,) = [s for s in stage_plan("feedback", TrainConfig()) if s.number == 3]
    apply_stage(model, stage3.trainable, stage3.optional)
    cfg = from_dict({}, {"model.variant": "feedback", "model.alpha": 0.0, "train.precision": "fp32"})
    gen = torch.Generator().manual_seed(0)
    batches = [{"frames": torch.randint(0, 255, (n, 2, 3, 32, 32), dtype=torch.uint8, generator=gen),
                "label": torch.arange(n) % 4} for n in (2, 1)]
    bn = model.backbone.layer4[1].bn2
    before = bn.running_mean.clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    metrics = train_epoch(model, batches, opt, cfg, torch.device("cpu"), progress=False, ms_on=False)
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert bn.training and not torch.equal(bn.running_mean, before)  # the two-clip batch still updates BN
