"""Ego-RNN with motion segmentation and the feedback branch, one file per block."""

from egomodel.model.network import EgoRNN, ModelOutput

__all__ = ["EgoRNN", "ModelOutput"]
