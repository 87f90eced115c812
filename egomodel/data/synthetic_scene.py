"""How one synthetic clip is rendered: the classes (an object and a motion each), the users' scenes, the
objects' trajectories, and the frames, motion maps and flow of a clip (``render_clip``).

Everything is drawn on the pixel grid, so the ground truth is exact: the object moves by a whole, nonzero
number of pixels every frame over a static background. Hence, for frame t:

* the motion map is 255 exactly on the object's pixels in frame t (every one of them moves to frame t+1),
  0 elsewhere;
* the warp flow is ``128 + FLOW_SCALE * d`` on those pixels, where d is the object's displacement from
  frame t to frame t+1 (x right, y down), and 128 elsewhere;
* ``frame[t+1][p + d] == frame[t][p]`` for every moving pixel p, and every pixel outside the object in
  both frames is unchanged.

The last frame's map and flow describe the step to the next, unrendered, position, so every frame has a
map and a flow image. :mod:`egomodel.data.synthetic` writes clips into a data set in the GTEA61 layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FLOW_SCALE = 4  # flow image value = 128 + FLOW_SCALE * displacement in pixels, clipped to 0..255
OBJECT_SCALE = 0.25  # object side as a fraction of the frame's short side
MIN_SIDE = 32  # smallest frame side at which every motion fits and moves by >= 1 pixel per frame

# object name -> (shape, base RGB colour); shapes and colours both differ between objects.
OBJECTS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "cup": ("disc", (220, 40, 40)),
    "box": ("square", (40, 80, 220)),
    "spoon": ("bar", (235, 200, 30)),
    "cone": ("triangle", (40, 170, 60)),
    "ring": ("annulus", (200, 50, 200)),
    "plate": ("ellipse", (30, 200, 210)),
}
MOTIONS = ("shake", "stir", "slide")

# Classes in the order they are taken for a given number of classes. Every prefix of length >= 2
# has a pair that differs by motion alone (shake_cup / stir_cup) and, from 4 on, a pair that differs
# by object alone (shake_cup / shake_box).
CLASS_ORDER: tuple[tuple[str, str], ...] = (
    ("shake", "cup"), ("stir", "cup"), ("slide", "box"), ("shake", "box"),
    ("stir", "spoon"), ("slide", "spoon"), ("shake", "cone"), ("stir", "cone"),
    ("slide", "cup"), ("stir", "box"), ("shake", "spoon"), ("slide", "cone"),
    ("shake", "ring"), ("stir", "ring"), ("slide", "ring"),
    ("shake", "plate"), ("stir", "plate"), ("slide", "plate"),
)  # fmt: skip


@dataclass(frozen=True)
class _Scene:
    """Where a user films: background tint, stripe direction (stripes vary along a*x + b*y) and
    period in pixels, and an RGB gain on the object (lighting)."""

    tint: tuple[int, int, int]
    direction: tuple[int, int]
    period: int
    gain: tuple[float, float, float]


_USER_SCENES: tuple[_Scene, ...] = (
    _Scene((150, 132, 110), (0, 1), 8, (1.05, 1.00, 0.92)),
    _Scene((108, 122, 150), (1, 0), 6, (0.92, 0.97, 1.06)),
    _Scene((118, 145, 112), (1, 1), 10, (0.97, 1.05, 0.95)),
    _Scene((132, 112, 138), (1, -1), 7, (0.90, 0.90, 0.90)),
)
_STRIPE_AMPLITUDE = 16
_BACKGROUND_NOISE = 4.0
_MARGIN = 2


@dataclass(frozen=True)
class SyntheticClass:
    """One synthetic class: its folder name, object and motion, and its fixed seed index."""

    name: str
    obj: str
    motion: str
    index: int


def plan_classes(n: int) -> list[SyntheticClass]:
    """The first ``n`` classes of :data:`CLASS_ORDER` (2 <= n <= 18)."""
    if not 2 <= n <= len(CLASS_ORDER):
        raise ValueError(f"number of classes must be between 2 and {len(CLASS_ORDER)}, got {n}")
    return [SyntheticClass(f"{motion}_{obj}", obj, motion, i) for i, (motion, obj) in enumerate(CLASS_ORDER[:n])]


def shape_mask(shape: str, s: int) -> np.ndarray:
    """Boolean mask of an object of nominal size ``s`` pixels."""
    if shape in ("bar", "ellipse"):
        h, w = (max(3, s // 3), s + s // 2) if shape == "bar" else (max(5, (2 * s) // 3), s + s // 3)
    else:
        h, w = s, s
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    r2 = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2
    if shape in ("disc", "ellipse"):
        return r2 <= 1.0
    if shape == "annulus":
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "triangle":
        return np.abs(xx - cx) <= (yy + 1) / h * (w / 2)
    return np.ones((h, w), dtype=bool)  # square, bar


def object_image(mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The object's pixels: its colour shaded by a diagonal gradient in object coordinates, so the
    texture moves rigidly with the object."""
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    shade = 1.0 - 0.3 * (yy + xx) / max(1, h + w - 2)
    return np.clip(np.rint(colour[None, None, :] * shade[..., None]), 0, 255).astype(np.uint8)


def _user_scene(user: int) -> _Scene:
    """Scene of user index ``user`` (0 = S1); users beyond S4 get values derived from their index."""
    if user < len(_USER_SCENES):
        return _USER_SCENES[user]
    rng = np.random.default_rng(np.random.SeedSequence([7919, user]))
    r, g, b = (int(v) for v in rng.integers(100, 160, 3))
    gr, gg, gb = (float(v) for v in rng.uniform(0.9, 1.08, 3))
    direction = ((0, 1), (1, 0), (1, 1), (1, -1))[int(rng.integers(4))]
    return _Scene((r, g, b), direction, int(rng.integers(5, 12)), (gr, gg, gb))


def _background(user: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Static background of one clip: the user's tinted stripes plus mild per-clip noise."""
    scene = _user_scene(user)
    (a, b), half = scene.direction, scene.period // 2
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = np.where(((a * xx + b * yy) // half) % 2 == 0, 1.0, -1.0)
    base = np.asarray(scene.tint, dtype=np.float64)[None, None, :] + _STRIPE_AMPLITUDE * stripes[..., None]
    noise = rng.normal(0.0, _BACKGROUND_NOISE, (height, width, 1))
    return np.clip(np.rint(base + noise), 0, 255).astype(np.uint8)


def _bounce(start: int, lo: int, hi: int, speed: int, direction: int, steps: int) -> list[int]:
    """Positions of a point moving ``speed`` pixels per step in [lo, hi], reversing before it would
    leave; every step moves exactly ``speed`` pixels (needs hi - lo >= 2 * speed)."""
    positions = [start]
    pos = start
    for _ in range(steps):
        if not lo <= pos + direction * speed <= hi:
            direction = -direction
        pos += direction * speed
        positions.append(pos)
    return positions


def trajectory(
    motion: str, width: int, height: int, w: int, h: int, steps: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Top-left object positions (x, y) for ``steps + 1`` time steps; consecutive ones always differ
    and the object always lies fully inside the frame."""
    x_lo, x_hi = _MARGIN, width - w - _MARGIN
    y_lo, y_hi = _MARGIN, height - h - _MARGIN
    unit = max(1, round(min(width, height) / 32))
    if motion == "slide":
        speed = int(rng.integers(unit, 2 * unit + 1))
        speed = min(speed, max(1, (x_hi - x_lo) // 2))
        xs = _bounce(int(rng.integers(x_lo, x_hi + 1)), x_lo, x_hi, speed, int(rng.choice([-1, 1])), steps)
        y = int(rng.integers(y_lo + (y_hi - y_lo) // 4, y_hi - (y_hi - y_lo) // 4 + 1))
        return [(x, y) for x in xs]
    if motion == "shake":
        speed = int(rng.integers(unit + 1, 2 * unit + 2))
        steps_per_swing = int(rng.integers(2, 4))
        speed = min(speed, (y_hi - y_lo) // steps_per_swing)
        amplitude = speed * steps_per_swing  # the start lies on the grid, so every swing is full
        top = int(rng.integers(y_lo, y_hi - amplitude + 1))
        start = top + speed * int(rng.integers(0, steps_per_swing + 1))
        ys = _bounce(start, top, top + amplitude, speed, int(rng.choice([-1, 1])), steps)
        x = int(rng.integers(x_lo + (x_hi - x_lo) // 4, x_hi - (x_hi - x_lo) // 4 + 1))
        return [(x, y) for y in ys]
    # stir: the object's centre runs round a circle, clockwise or not, 6-9 frames per turn.
    radius = rng.uniform(0.14, 0.2) * min(width, height)
    radius = min(radius, (x_hi - x_lo) / 2, (y_hi - y_lo) / 2)
    period = int(rng.integers(6, 10))
    phase = rng.uniform(0.0, 2 * math.pi)
    turn = int(rng.choice([-1, 1]))
    cx = rng.uniform(x_lo + radius, x_hi - radius)
    cy = rng.uniform(y_lo + radius, y_hi - radius)
    points = []
    for t in range(steps + 1):
        angle = phase + turn * 2 * math.pi * t / period
        x = min(max(round(cx + radius * math.cos(angle)), x_lo), x_hi)
        y = min(max(round(cy + radius * math.sin(angle)), y_lo), y_hi)
        points.append((x, y))
    return points


def render_clip(
    cls: SyntheticClass, user: int, width: int, height: int, frames: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """RGB frames, motion maps, flow-x and flow-y images of one clip (lists of uint8 arrays)."""
    shape, base_colour = OBJECTS[cls.obj]
    gain = np.asarray(_user_scene(user).gain)
    colour = np.clip((np.asarray(base_colour) + rng.integers(-15, 16, 3)) * gain, 0, 255)
    size = round(OBJECT_SCALE * min(width, height) * rng.uniform(0.9, 1.1))
    mask = shape_mask(shape, size)
    obj = object_image(mask, colour)
    h, w = mask.shape
    background = _background(user, width, height, rng)
    path = trajectory(cls.motion, width, height, w, h, frames, rng)

    rgb, maps, flow_x, flow_y = [], [], [], []
    for t in range(frames):
        (x, y), (nx, ny) = path[t], path[t + 1]
        if (x, y) == (nx, ny):
            raise RuntimeError(f"object of {cls.name} does not move at step {t}; frame size too small")
        frame = background.copy()
        frame[y : y + h, x : x + w][mask] = obj[mask]
        moving = np.zeros((height, width), dtype=bool)
        moving[y : y + h, x : x + w] = mask
        fx = np.full((height, width), 128, dtype=np.uint8)
        fy = np.full((height, width), 128, dtype=np.uint8)
        fx[moving] = np.clip(128 + FLOW_SCALE * (nx - x), 0, 255)
        fy[moving] = np.clip(128 + FLOW_SCALE * (ny - y), 0, 255)
        rgb.append(frame)
        maps.append(np.where(moving, 255, 0).astype(np.uint8))
        flow_x.append(fx)
        flow_y.append(fy)
    return rgb, maps, flow_x, flow_y
