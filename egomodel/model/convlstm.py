"""ConvLSTM cell as in Ego-RNN: eight 3x3 gate convolutions (input->gate and hidden->gate for i, f, c, o).

Two ways to run the same weights (``gates``), picked per device by measurement (``benchmarks.device``):

- ``separate``: the eight convolutions one by one at every time step, as the authors' code does;
- ``fused``: the four input convolutions as one 512->4*hidden convolution over all B*T frames at once
  (the input does not depend on the recurrence), then one hidden->4*hidden convolution per step.

Both read the same parameters, so a checkpoint does not depend on the mode it was trained in.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from egomodel.config import GATE_MODES

GATES = ("i", "f", "c", "o")
# what "auto" picks on each device type: the faster mode measured there (docs/benchmarks.md)
FASTER = {"cpu": "separate", "cuda": "fused"}


class ConvLSTM(nn.Module):
    def __init__(self, in_channels: int = 512, hidden: int = 512, kernel: int = 3, gates: str = "auto") -> None:
        super().__init__()
        if gates not in GATE_MODES:
            raise ValueError(f"ConvLSTM gates must be one of {GATE_MODES}, got {gates!r}")
        self.hidden = hidden
        self.gates = gates
        self.pad = kernel // 2
        self.xx = nn.ModuleDict({g: nn.Conv2d(in_channels, hidden, kernel, padding=self.pad) for g in GATES})
        self.hh = nn.ModuleDict({g: nn.Conv2d(hidden, hidden, kernel, padding=self.pad, bias=False) for g in GATES})
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def mode(self, device: torch.device) -> str:
        return FASTER.get(device.type, "separate") if self.gates == "auto" else self.gates

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, C, s, s) -> final hidden and cell states, each (B, hidden, s, s)."""
        b, steps, _, h, w = x.shape
        state = x.new_zeros(b, self.hidden, h, w)  # zero state on the input's device
        hid, cell = state, state
        fused = self.mode(x.device) == "fused"
        if fused:
            wx = torch.cat([self.xx[g].weight for g in GATES])
            bx = torch.cat([self.xx[g].bias for g in GATES])
            wh = torch.cat([self.hh[g].weight for g in GATES])
            xg = F.conv2d(x.flatten(0, 1), wx, bx, padding=self.pad).unflatten(0, (b, steps))
        for t in range(steps):
            if fused:
                i, f, c, o = (xg[:, t] + F.conv2d(hid, wh, padding=self.pad)).chunk(4, dim=1)
                hid, cell = _update(i, f, c, o, cell)
            else:
                hid, cell = self.step(x[:, t], hid, cell)
        return hid, cell

    def step(self, xt: torch.Tensor, hid: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step with the separate gate convolutions: x_t (B, C, s, s) and the state -> new state
        (what a device loops over, one frame at a time: :mod:`egomodel.model.streaming`)."""
        i, f, c, o = (self.xx[k](xt) + self.hh[k](hid) for k in GATES)
        return _update(i, f, c, o, cell)


def _update(i: torch.Tensor, f: torch.Tensor, c: torch.Tensor, o: torch.Tensor,
            cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(c)
    return torch.sigmoid(o) * torch.tanh(cell), cell
