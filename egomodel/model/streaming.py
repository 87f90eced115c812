"""The network as one streaming step, for a device that classifies while the camera runs.

A wearable does not hold a clip and run it at once: it feeds one frame at a time and carries the
recurrent state. :class:`StreamingStep` is that step for the RGB variants (``convlstm``, ``attention``,
``ms``, ``feedback``):

- inputs ``frame`` (B, 3, S, S) uint8 RGB, cropped and resized as the data sets give it (normalised
  inside the step), ``h`` and ``c`` (B, hidden, s, s) the ConvLSTM state (zeros before a clip's first
  frame), and for ``feedback`` also ``ms_prev`` (B, 100, s, s), frame t-1's motion-segmentation features,
  and ``first`` (1,) bool, true at a clip's first frame (``ms_prev`` is then ignored);
- outputs ``probs`` (B, classes), the clip's class probabilities after the frames seen so far (after
  the T-th frame: exactly what the whole-clip model gives), the new ``h`` and ``c``, and for
  ``feedback`` ``ms`` (B, 100, s, s), to pass as the next frame's ``ms_prev``.

``flow`` and ``two_stream`` are not streamed: their input is a stack of optical flow between frames,
which the device would have to compute first (the cost the paper's single-stream model avoids).
"""

from __future__ import annotations

import torch
from torch import nn

from egomodel.data.transforms import MEAN, STD
from egomodel.model.network import EgoRNN

STREAMABLE = ("convlstm", "attention", "ms", "feedback")


class StreamingStep(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        variant = getattr(model, "variant", type(model).__name__)
        if not isinstance(model, EgoRNN) or variant not in STREAMABLE:
            raise ValueError(f"a {variant} model cannot be streamed one frame at a time: only {STREAMABLE} can "
                             "(flow and two_stream read optical flow, which the device would compute first)")
        self.model = model.eval()
        self.feedback = model.feedback is not None and bool(model.feedback_on)
        self.register_buffer("mean", torch.as_tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(STD).view(1, 3, 1, 1), persistent=False)

    @property
    def input_names(self) -> list[str]:
        return ["frame", "h", "c", "ms_prev", "first"] if self.feedback else ["frame", "h", "c"]

    @property
    def output_names(self) -> list[str]:
        return ["probs", "h_out", "c_out", "ms"] if self.feedback else ["probs", "h_out", "c_out"]

    def initial_state(self, batch: int = 1) -> dict[str, torch.Tensor]:
        """Zeros for every state input, ``first`` true: what a clip's first frame is given."""
        m = self.model
        zeros = torch.zeros(batch, m.convlstm.hidden, m.size, m.size)
        state = {"h": zeros, "c": zeros.clone()}
        if self.feedback:
            state["ms_prev"] = torch.zeros(batch, m.ms_head.conv100.out_channels, m.size, m.size)
            state["first"] = torch.ones(1, dtype=torch.bool)
        return state

    def forward(self, frame: torch.Tensor, h: torch.Tensor, c: torch.Tensor, ms_prev: torch.Tensor | None = None,
                first: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        x = (frame.float() / 255.0 - self.mean) / self.std
        lstm_in, _, mid, _ = self.model.encode_frames(x, ms_prev if self.feedback else None, first)
        h, c = self.model.convlstm.step(lstm_in, h, c)
        probs = torch.softmax(self.model.classifier(c.mean(dim=(2, 3))), dim=1)
        return (probs, h, c, mid) if self.feedback else (probs, h, c)


@torch.no_grad()
def stream(step: StreamingStep, frames: torch.Tensor) -> torch.Tensor:
    """Loop the step over a clip: frames (B, T, 3, S, S) uint8 -> the last frame's probabilities."""
    state = step.initial_state(frames.shape[0])
    probs = None
    for t in range(frames.shape[1]):
        out = step(frames[:, t], *state.values())
        probs, state["h"], state["c"] = out[:3]
        if step.feedback:
            state["ms_prev"], state["first"] = out[3], torch.zeros(1, dtype=torch.bool)
    return probs
