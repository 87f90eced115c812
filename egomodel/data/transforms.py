"""One augmentation draw per clip, applied alike to frames, motion maps and flow (docs/design.md §3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

SCALES = (1.0, 0.875, 0.75, 0.65625)
POSITIONS = ("center", "top_left", "top_right", "bottom_left", "bottom_right")
TEST_SCALE = 0.875  # the usual resize-to-256, centre-crop-224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class View:
    """A square crop (left, top, side) of the original frame, then an optional horizontal flip."""

    left: int
    top: int
    side: int
    flip: bool = False

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.left + self.side, self.top + self.side)


def _place(width: int, height: int, side: int, position: str) -> tuple[int, int]:
    if position == "center":
        return (width - side) // 2, (height - side) // 2
    left = 0 if position.endswith("left") else width - side
    top = 0 if position.startswith("top") else height - side
    return left, top


def draw_view(rng: np.random.Generator, width: int, height: int) -> View:
    """Multi-scale corner crop + random flip, one draw for the whole clip."""
    side = max(1, int(min(width, height) * SCALES[rng.integers(len(SCALES))]))
    left, top = _place(width, height, side, POSITIONS[rng.integers(len(POSITIONS))])
    return View(left, top, side, bool(rng.integers(2)))


def centre_view(width: int, height: int) -> View:
    side = max(1, int(min(width, height) * TEST_SCALE))
    return View(*_place(width, height, side, "center"), side, False)


def _crop_resize(img: Image.Image, view: View, frame_size: tuple[int, int] | None, size: int,
                 resample: int) -> Image.Image:
    """The view's crop of ``img`` resized to size x size. The view is in RGB-frame pixels: a motion map or
    flow image of another size (``frame_size`` is the frame's (width, height)) gets the box scaled by the
    size ratio, so it covers the same part of the scene."""
    if frame_size is None or tuple(frame_size) == img.size:
        return img.crop(view.box).resize((size, size), resample)
    sx, sy = img.size[0] / frame_size[0], img.size[1] / frame_size[1]
    left, top, right, bottom = view.box
    return img.resize((size, size), resample, box=(left * sx, top * sy, right * sx, bottom * sy))


def rgb_tensor(img: Image.Image, view: View, size: int) -> np.ndarray:
    """Crop, resize to size x size, flip: (3, size, size) uint8. The loader ships uint8 (a quarter of
    float32's bytes) and :func:`normalize_frames` runs on the training device."""
    arr = np.asarray(img.crop(view.box).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    if view.flip:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def normalize_frames(x: torch.Tensor) -> torch.Tensor:
    """uint8 frames (..., 3, H, W) -> ImageNet-normalised float32; float input is taken as normalised."""
    return normalize_pixels(x.float()) if x.dtype == torch.uint8 else x


def normalize_pixels(x: torch.Tensor) -> torch.Tensor:
    """Frames (..., 3, H, W) of pixel values 0-255, in any float dtype -> ImageNet-normalised."""
    mean = torch.as_tensor(MEAN, device=x.device).view(3, 1, 1)
    std = torch.as_tensor(STD, device=x.device).view(3, 1, 1)
    return (x / 255.0 - mean) / std


def motion_target(gray: np.ndarray, view: View, s: int, frame_size: tuple[int, int] | None = None) -> np.ndarray:
    """Fraction of moving pixels in each of s x s cells of the cropped map (area-weighted); a map whose size
    differs from the frame's ``frame_size`` (width, height) is cropped at the same place in the scene."""
    frac = Image.fromarray(gray.astype(np.float32) / 255.0, mode="F")
    out = np.asarray(_crop_resize(frac, view, frame_size, s, Image.BOX), dtype=np.float32)
    if view.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0))


def flow_tensor(gray: np.ndarray, view: View, size: int, is_x: bool,
                frame_size: tuple[int, int] | None = None) -> np.ndarray:
    """Warp-flow frame (128 = no motion) to [-1, 1]; a flip inverts flow-x. A flow image whose size differs
    from the frame's ``frame_size`` (width, height) is cropped at the same place in the scene."""
    img = _crop_resize(Image.fromarray(gray), view, frame_size, size, Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    if view.flip:
        arr = arr[:, ::-1]
        if is_x:
            arr = -arr
    return np.ascontiguousarray(arr)
