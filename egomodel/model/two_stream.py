"""Ego-RNN's two-stream model: a trained attention RGB stream and a trained flow stream, their clip
features joined (512 + 512), dropout, linear."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from egomodel.config import ModelConfig
from egomodel.model.flow import FlowNet
from egomodel.model.network import EgoRNN, ModelOutput
from egomodel.model.staged import StagedModel


class TwoStream(StagedModel):
    """Input: frames (B, T, 3, H, W) and flow (B, [S,] 2*stack, H, W)."""

    input_keys = ("frames", "flow")

    def __init__(self, cfg: ModelConfig, num_classes: int, image_size: int, flow_stack: int) -> None:
        super().__init__()
        rgb_cfg = dataclasses.replace(cfg, variant="attention", pretrained="none")
        self.rgb = EgoRNN(rgb_cfg, num_classes, image_size)
        self.flow = FlowNet("none", num_classes, flow_stack, cfg.dropout, image_size, cfg.backbone)
        self.classifier = nn.Sequential(nn.Dropout(cfg.fusion_dropout), nn.Linear(cfg.hidden + 512, num_classes))

    def load_streams(self, rgb_state: dict[str, torch.Tensor], flow_state: dict[str, torch.Tensor]) -> None:
        """Start from trained streams (their own classifiers are loaded but unused)."""
        self.rgb.load_state_dict(rgb_state)
        self.flow.load_state_dict(flow_state)

    def blocks(self) -> dict[str, list[nn.Parameter]]:
        rgb = self.rgb.blocks()
        return {
            **{k: rgb[k] for k in ("conv1", "layer1", "layer2", "layer3", "layer4", "fc", "convlstm")},
            "flow_layer4": list(self.flow.backbone.layer4.parameters()),
            "classifier": list(self.classifier.parameters()),
        }

    def block_modules(self) -> dict[str, list[nn.Module]]:
        rgb = self.rgb.block_modules()
        flow = self.flow.block_modules()
        return {
            **{k: rgb[k] for k in ("conv1", "layer1", "layer2", "layer3", "layer4", "fc", "convlstm")},
            "flow_layer4": flow["layer4"],
            "classifier": [self.classifier],
            # parts no stage trains: always frozen
            "rgb_classifier": [self.rgb.classifier],
            **{f"flow_{k}": v for k, v in flow.items() if k != "layer4"},
        }

    def forward(self, frames: torch.Tensor, flow: torch.Tensor) -> ModelOutput:
        lstm_in, _, cam = self.rgb.sequence(frames)
        joint = torch.cat([self.rgb.clip_features(lstm_in), self.flow.features(flow).mean(1)], 1)
        return ModelOutput(self.classifier(joint), None, cam)
