"""Ego-RNN with motion segmentation and the feedback branch, its flow stream and the two-stream
model, one file per block; ``checkpoint`` is the model's saved form (written by training, read by
evaluation, the pictures and the champion model)."""

from egomodel.config import Config
from egomodel.model.flow import FlowNet
from egomodel.model.network import EgoRNN, ModelOutput
from egomodel.model.staged import StagedModel
from egomodel.model.two_stream import TwoStream


def build_model(cfg: Config, num_classes: int) -> StagedModel:
    """The network of ``cfg.model.variant`` (weights: ``cfg.model.pretrained``)."""
    m, d = cfg.model, cfg.data
    if m.variant == "flow":
        return FlowNet(m.pretrained, num_classes, d.flow_stack, m.dropout, d.image_size, m.backbone)
    if m.variant == "two_stream":
        return TwoStream(m, num_classes, d.image_size, d.flow_stack)
    return EgoRNN(m, num_classes, d.image_size)


__all__ = ["EgoRNN", "FlowNet", "ModelOutput", "StagedModel", "TwoStream", "build_model"]
