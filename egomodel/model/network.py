"""The assembled network: ResNet-34 -> (CAM attention) -> ConvLSTM -> classifier, with the MS head
and the feedback branch for the variants that have them (docs/design.md §4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from egomodel.config import ModelConfig
from egomodel.model.attention import cam_attention
from egomodel.model.backbone import POINT_SHAPES, backbone_features, build_resnet, resnet_blocks
from egomodel.model.convlstm import ConvLSTM
from egomodel.model.feedback import FeedbackBranch
from egomodel.model.ms_head import MSHead
from egomodel.model.staged import StagedModel


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, num_classes)
    ms: torch.Tensor | None  # (B, T, K, s, s) motion-map logits, K = 2 or 1
    cams: torch.Tensor | None  # (B, T, s, s) attention maps


class EgoRNN(StagedModel):
    """Variants: ``convlstm``, ``attention``, ``ms``, ``feedback`` (the rows of Table 3)."""

    def __init__(self, cfg: ModelConfig, num_classes: int, image_size: int = 224) -> None:
        super().__init__()
        self.variant = cfg.variant
        self.insertion = cfg.insertion
        self.image_size = image_size
        self.size = image_size // 32
        self.backbone = build_resnet(cfg.pretrained, cfg.backbone)
        self.convlstm = ConvLSTM(512, cfg.hidden)
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, num_classes))
        self.ms_head = (
            MSHead(self.size, cfg.ms_task == "classification") if cfg.variant in ("ms", "feedback") else None
        )
        self.feedback = None
        if cfg.variant == "feedback":
            channels, _ = POINT_SHAPES[cfg.insertion]
            self.feedback = FeedbackBranch(channels, mid=cfg.feedback_channels)
        # whether the feedback branch runs; set by egomodel.training.stages.apply_stage, saved in checkpoints
        self.register_buffer("feedback_on", torch.zeros((), dtype=torch.bool))

    # ----------------------------------------------------------------- blocks and freezing
    def blocks(self) -> dict[str, list[nn.Parameter]]:
        """Parameters of each named block this variant uses (the vocabulary of stage configs)."""
        out = super().blocks()
        if self.variant == "convlstm":
            del out["fc"]  # no CAM: the backbone's fc is never used
        else:
            out["fc"] = [self.backbone.fc.weight]  # only the CAM row is used; the bias never gets a gradient
        return out

    def block_modules(self) -> dict[str, list[nn.Module]]:
        out: dict[str, list[nn.Module]] = {
            **resnet_blocks(self.backbone),
            "convlstm": [self.convlstm],
            "classifier": [self.classifier],
            "fc": [self.backbone.fc],
        }
        if self.ms_head is not None:
            out["ms_head"] = [self.ms_head]
        if self.feedback is not None:
            out["feedback"] = [self.feedback]
        return out

    # ----------------------------------------------------------------------- forward
    def encode_frames(
        self, x: torch.Tensor, prev_ms: torch.Tensor | None = None, first: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """One batch of frames (N, 3, H, W) -> ConvLSTM input, MS logits, Conv100, CAM. ``first`` (a bool
        tensor, streaming only): where true, ``prev_ms`` is ignored, as at a clip's first frame."""
        modulate = None
        if self.feedback is not None and prev_ms is not None:
            point, branch = self.insertion, self.feedback

            def modulate(p: str, f: torch.Tensor) -> torch.Tensor:
                if p != point:
                    return f
                out = branch(f, prev_ms)
                return out if first is None else torch.where(first, f, out)

        feats, no_bn = backbone_features(self.backbone, x, modulate)  # (N, 512, s, s) each
        if self.variant == "convlstm":
            lstm_in, cam = feats, None
        else:
            lstm_in, cam = cam_attention(feats, no_bn, self.backbone.fc)
        ms = mid = None
        if self.ms_head is not None:
            ms, mid = self.ms_head(feats)
        return lstm_in, ms, mid, cam

    def forward(self, frames: torch.Tensor) -> ModelOutput:
        """frames: (B, T, 3, H, W) normalised RGB."""
        lstm_in, ms, cam = self.sequence(frames)
        return ModelOutput(self.classify(lstm_in), ms, cam)

    def sequence(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(B, T, 3, H, W) -> ConvLSTM input (B, T, 512, s, s), MS logits, CAMs (or None)."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"expected frames of shape (B, T, 3, H, W), got {tuple(frames.shape)}")
        b, t, _, h, w = frames.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"model built for {self.image_size}x{self.image_size} input, got {h}x{w}")
        if self.feedback is not None and bool(self.feedback_on):
            # frame t needs frame t-1's MS features: loop over time
            parts, prev = [], None
            for i in range(t):
                lstm_in, ms, mid, cam = self.encode_frames(frames[:, i], prev)
                parts.append((lstm_in, ms, cam))
                prev = mid
            lstm_in = torch.stack([p[0] for p in parts], 1)
            ms = torch.stack([p[1] for p in parts], 1)
            cam = torch.stack([p[2] for p in parts], 1)
        else:
            # no recurrence through the backbone: one call over all B*T frames
            lstm_in, ms, _, cam = self.encode_frames(frames.flatten(0, 1))
            lstm_in = lstm_in.unflatten(0, (b, t))
            ms = None if ms is None else ms.unflatten(0, (b, t))
            cam = None if cam is None else cam.unflatten(0, (b, t))
        return lstm_in, ms, cam

    def encode_clips(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> the ConvLSTM's input (B, T, 512, s, s), batched over all frames.

        Stage 1 trains nothing before this point, so these features can be cached per clip view.
        """
        b, t = frames.shape[:2]
        return self.encode_frames(frames.flatten(0, 1))[0].unflatten(0, (b, t))

    def classify(self, lstm_in: torch.Tensor) -> torch.Tensor:
        """ConvLSTM over time, avg-pool of the final *cell* state, dropout, linear: (B, classes)."""
        return self.classifier(self.clip_features(lstm_in))

    def clip_features(self, lstm_in: torch.Tensor) -> torch.Tensor:
        """(B, T, 512, s, s) -> the avg-pooled final ConvLSTM cell state (B, hidden)."""
        _, cell = self.convlstm(lstm_in)
        return cell.mean(dim=(2, 3))
