"""Training clips held on the training device (``data.device_clips``): augmentation runs there.

On a GPU the data loader, not the model, limits training (README, Performance): the model's stage-2
step takes about 1,450 clips/s on an H100, while 14 loader processes deliver under 800. A clip's sampled
frames never change between epochs, only the crop and flip do, so the training split's decoded frames
(and motion maps) are loaded once as uint8 tensors on the device, and each batch is cropped, resized,
flipped and normalised there.

The views are the loader's (:meth:`ClipDataset.view_for`, same seed, epoch key and clip order), so a
run sees the same crops either way. The pixels are close to the loader's, not identical: the frames are
resized with PyTorch's antialiased bilinear filter (the loader uses Pillow's) and rounded to uint8 like
Pillow's output; the motion-map targets use Pillow's own BOX coefficients, as the loader does.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from egomodel.config import ConfigError
from egomodel.data.dataset import ClipDataset, EpochSampler
from egomodel.data.transforms import View, normalize_frames


@lru_cache(maxsize=64)
def _box_weights(side: int, s: int) -> np.ndarray:
    """(s, side): Pillow's BOX resize of ``side`` pixels to ``s`` as a matrix (its coefficients: each
    output pixel averages the input pixels whose centres fall in its span)."""
    scale = side / s
    w = np.zeros((s, side), dtype=np.float64)
    for i in range(s):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - scale * 0.5 + 0.5), 0), min(int(centre + scale * 0.5 + 0.5), side)
        for j in range(lo, hi):
            x = (j - centre + 0.5) / scale
            w[i, j] = 1.0 if -0.5 < x <= 0.5 else 0.0
        w[i] /= max(w[i].sum(), 1e-12)
    return w.astype(np.float32)


class DeviceClips:
    """The training split's clips as uint8 tensors on ``device``; :meth:`loader` gives training batches."""

    def __init__(self, ds: ClipDataset, device: torch.device, progress: bool = True) -> None:
        if not ds.with_frames or ds.with_flow:
            raise ConfigError("data.device_clips: only the RGB variants (convlstm, attention, ms, feedback) can hold "
                              "their clips on the device")
        self.ds, self.device = ds, device
        frames, maps = [], []
        for i in tqdm(range(len(ds)), desc="clips to the device", unit="clip", leave=False, disable=not progress):
            images, mm = ds.decoded(i)
            frames.append(np.stack([np.asarray(im) for im in images]))
            if mm is not None:
                maps.append(np.stack(mm))
        sizes = {f.shape[1:3] for f in frames} | {m.shape[1:3] for m in maps}
        if len(sizes) != 1:
            raise ConfigError(f"data.device_clips: frames and motion maps must share one size, found {sorted(sizes)}")
        self.frames = torch.from_numpy(np.stack(frames)).to(device)  # (N, T, H, W, 3) uint8
        self.maps = torch.from_numpy(np.stack(maps)).to(device) if maps else None  # (N, T, H, W) uint8
        self.labels = torch.tensor([ds.index[c.label_name] for c in ds.clips], device=device)
        self.height, self.width = self.frames.shape[2:4]

    @property
    def nbytes(self) -> int:
        return self.frames.numel() + (self.maps.numel() if self.maps is not None else 0)

    def batch(self, items: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Training batch for ``(clip, epoch key)`` items. Clips are grouped by crop side (the four
        scales), so a batch costs a handful of kernel launches per group, not per clip."""
        dev = self.device
        idx = [i for i, _ in items]
        views = [self.ds.view_for(item, self.width, self.height) for item in items]
        size = self.ds.cfg.image_size
        b, t = len(items), self.frames.shape[1]
        frames = torch.empty(b, t, 3, size, size, dtype=torch.uint8, device=dev)
        maps = torch.empty(b, t, size // 32, size // 32, device=dev) if self.maps is not None else None
        for side in sorted({v.side for v in views}):
            pos = [k for k, v in enumerate(views) if v.side == side]
            flip = torch.tensor([views[k].flip for k in pos], device=dev).view(-1, 1, 1, 1)
            where = torch.tensor(pos, device=dev)
            crops = self._crops(self.frames, [idx[k] for k in pos], [views[k] for k in pos])  # (G, T, side, side, 3)
            x = crops.flatten(0, 1).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            x = x.round_().clamp_(0, 255).to(torch.uint8).unflatten(0, (len(pos), t))  # Pillow returns uint8 too
            frames[where] = torch.where(flip[..., None], x.flip(-1), x)
            if maps is not None:
                w = torch.from_numpy(_box_weights(side, size // 32)).to(dev)
                frac = self._crops(self.maps, [idx[k] for k in pos], [views[k] for k in pos]).float() / 255.0
                mm = (w @ frac @ w.T).clamp_(0.0, 1.0)
                maps[where] = torch.where(flip, mm.flip(-1), mm)
        out = {"frames": normalize_frames(frames), "label": self.labels[idx], "index": torch.tensor(idx, device=dev)}
        if maps is not None:
            out["mmaps"] = maps
        return out

    @staticmethod
    def _crops(store: torch.Tensor, idx: list[int], views: list[View]) -> torch.Tensor:
        return torch.stack([store[i, :, v.top:v.top + v.side, v.left:v.left + v.side] for i, v in zip(idx, views)])

    def loader(self, batch_size: int, epoch_key: int) -> DeviceLoader:
        return DeviceLoader(self, batch_size, epoch_key)


class DeviceLoader:
    """What the trainer needs of a training DataLoader: ``len``, iteration, ``sampler.set_epoch``."""

    def __init__(self, clips: DeviceClips, batch_size: int, epoch_key: int) -> None:
        self.clips, self.batch_size = clips, batch_size
        self.sampler = EpochSampler(len(clips.ds), clips.ds.seed, epoch_key)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = list(self.sampler)
        for start in range(0, len(order), self.batch_size):
            yield self.clips.batch(order[start:start + self.batch_size])
