"""Synthetic raw videos filmed by a moving camera, with the true masks of the moving object.

``python -m egomodel.data.synthetic OUT --ego-motion`` writes what a user brings to ``egomodel.prepare``:

```
OUT/videos/<user>.mp4                          one H.264 video per user, its clips back to back
OUT/manifest.csv                               video,label,user,start_frame,end_frame (one row per clip)
OUT/masks/<user>/<label>/<inst>/mask0001.png   the moving object's true pixels in each frame (0/255)
```

The camera is not made easy for the flow: it pans at least 3 px per frame, zooms in and out (up to 6 %)
and wobbles (a rotation of up to 2 degrees and a sub-pixel shake) over a textured scene, and every frame
gets sensor noise before H.264 encoding. The object (the class's shape and colour, textured) is carried
with the camera, like a thing in the hands, and moves in the world by its class's motion (shake, stir,
slide) plus the camera's pan; it never stands still in the world. Masks are numbered like the frames that
``egomodel.prepare`` writes (``mask0001`` is the segment's first frame), so they compare one to one.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from egomodel.data.synthetic_scene import OBJECT_SCALE, OBJECTS, object_image, plan_classes, shape_mask, trajectory

FPS = 30
PAN_MIN, PAN_MAX = 3.2, 5.0  # world px per frame; at the smallest zoom (0.94) that is >= 3 image px
ZOOM = 0.06  # zoom amplitude
ROLL = np.deg2rad(2.0)  # wobble amplitude
NOISE = 3.0  # sensor noise (sd, 0..255 scale)
MIN_OWN_MOTION = 1.5  # px per frame the object must move in the world


def _texture(height: int, width: int, tint: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A scene of blobs at two scales, tinted: uint8 (H, W, 3)."""
    base = np.zeros((height, width), np.float32)
    for sigma, weight in ((6.0, 1.0), (1.5, 0.6)):
        noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (height, width)).astype(np.float32), (0, 0), sigma)
        base += weight * noise / max(float(noise.std()), 1e-6)
    return np.clip(tint[None, None, :] + 28.0 * base[..., None], 0, 255).astype(np.uint8)


def _camera(t: int, centre: np.ndarray, pan: np.ndarray, phases: np.ndarray, width: int, height: int) -> np.ndarray:
    """3x3 world -> image: rotate and zoom about the camera's centre, which pans along ``pan``."""
    zoom = 1.0 + ZOOM * np.sin(2 * np.pi * t / 20 + phases[0])
    roll = ROLL * np.sin(2 * np.pi * t / 9 + phases[1])
    shake = 0.6 * np.array([np.sin(2.3 * t + phases[2]), np.cos(1.7 * t + phases[2])])
    c = centre + pan * t + shake
    cos, sin = zoom * np.cos(roll), zoom * np.sin(roll)
    rot = np.array([[cos, -sin], [sin, cos]])
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = np.array([width / 2, height / 2]) - rot @ c
    return m


def render_ego_clip(
    motion: str, colour: np.ndarray, shape: str, width: int, height: int, frames: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """RGB frames (H, W, 3) and true masks (H, W; 0/255) of one clip."""
    angle = rng.uniform(-0.4, 0.4) + (np.pi if rng.integers(2) else 0.0)
    pan = rng.uniform(PAN_MIN, PAN_MAX) * np.array([np.cos(angle), np.sin(angle)])
    phases = rng.uniform(0, 2 * np.pi, 3)
    mask = shape_mask(shape, round(OBJECT_SCALE * min(width, height) * rng.uniform(0.9, 1.1)))
    obj = object_image(mask, colour).astype(np.float32)
    h, w = mask.shape
    obj *= 1.0 + 0.25 * cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.0)[..., None]
    obj = np.clip(obj, 0, 255).astype(np.uint8)
    for _ in range(20):  # a path whose steps never cancel the pan (the object would stand still in the world)
        path = np.asarray(trajectory(motion, width, height, w, h, frames, rng), dtype=np.float64)
        own = np.linalg.norm(np.diff(path, axis=0) + pan, axis=1)
        if own.min() >= MIN_OWN_MOTION:
            break
    reach = int(np.ceil(np.abs(pan).max() * frames + 0.75 * (width + height))) + 8
    world_w, world_h = width + 2 * reach, height + 2 * reach
    centre = np.array([world_w / 2, world_h / 2]) - pan * frames / 2
    tint = np.clip(rng.normal(128, 12, 3), 90, 170).astype(np.float32)
    world = _texture(world_h, world_w, tint, rng)
    rgb, masks = [], []
    for t in range(frames):
        scene = world.copy()
        truth = np.zeros((world_h, world_w), np.float32)
        # the object is carried with the camera: its top-left in the world follows the camera's centre
        x, y = (centre + pan * t - np.array([width / 2, height / 2]) + path[t]).round().astype(int)
        scene[y : y + h, x : x + w][mask] = obj[mask]
        truth[y : y + h, x : x + w][mask] = 1.0
        cam = _camera(t, centre, pan, phases, width, height)
        frame = cv2.warpPerspective(scene, cam, (width, height), flags=cv2.INTER_LINEAR).astype(np.float32)
        frame += rng.normal(0.0, NOISE, frame.shape)
        rgb.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
        seen = cv2.warpPerspective(truth, cam, (width, height), flags=cv2.INTER_LINEAR)
        masks.append(np.where(seen >= 0.5, 255, 0).astype(np.uint8))
    return rgb, masks


def write_video(path: Path, frames: list[np.ndarray], fps: int = FPS) -> None:
    """H.264 (yuv420p, near-lossless) video of RGB uint8 frames; width and height must be even."""
    import av

    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "10", "preset": "fast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def generate_ego(
    out: Path | str,
    classes: int = 4,
    clips_per_class: int = 2,
    frames: int = 12,
    size: tuple[int, int] = (96, 72),
    seed: int = 0,
    users: int = 2,
) -> Path:
    """Write ``videos/``, ``manifest.csv`` and ``masks/`` into ``out`` (empty or absent); users are
    ``P01``, ``P02``, ... Same arguments, same frames (the video bytes depend on the encoder)."""
    width, height = size
    if width % 2 or height % 2 or min(width, height) < 48:
        raise ValueError(f"ego-motion videos need an even size of at least 48x48, got {width}x{height}")
    if frames < 2 or clips_per_class < 1 or users < 1:
        raise ValueError("need at least 2 frames, one clip per class and one user")
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"output folder {root} is not empty")
    (root / "videos").mkdir(parents=True)
    rows = []
    for user in range(users):
        name = f"P{user + 1:02d}"
        video: list[np.ndarray] = []
        for cls in plan_classes(classes):
            for clip in range(clips_per_class):
                rng = np.random.default_rng(np.random.SeedSequence([seed, user, cls.index, clip, 1]))
                shape, colour = _object_look(cls.obj, rng)
                rgb, masks = render_ego_clip(cls.motion, colour, shape, width, height, frames, rng)
                rows.append([f"videos/{name}.mp4", cls.name, name, len(video) + 1, len(video) + frames])
                video.extend(rgb)
                folder = root / "masks" / name / cls.name / str(clip + 1)
                folder.mkdir(parents=True)
                for t, m in enumerate(masks):
                    cv2.imwrite(str(folder / f"mask{t + 1:04d}.png"), m)
        write_video(root / "videos" / f"{name}.mp4", video)
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "label", "user", "start_frame", "end_frame"])
        writer.writerows(rows)
    return root


def _object_look(obj: str, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """The object's shape and its colour, varied per clip."""
    shape, base = OBJECTS[obj]
    return shape, np.clip(np.asarray(base, dtype=np.float64) + rng.integers(-15, 16, 3), 0, 255)


def mask_figures(prepared: Path | str, raw: Path | str, bound: float = 20.0) -> dict[str, float]:
    """How a root prepared from :func:`generate_ego`'s videos compares with the truth: the mean IoU of its
    motion maps with the true masks, and the mean over frame pairs of the median warp-flow magnitude (px)
    on the background and on the object."""
    from egomodel.data import layout
    from egomodel.data.prepare.motion import decode_flow

    def gray(path: Path) -> np.ndarray:
        return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)

    ious, background, moving = [], [], []
    for clip in layout.scan(prepared, need_mmaps=True, need_flow=True):
        truth = [gray(Path(raw, "masks", clip.key, f"mask{t:04d}.png")) > 0 for t in range(1, clip.num_frames + 1)]
        for t, mask in enumerate(truth, start=1):
            found = gray(clip.mmaps[t]) > 0
            ious.append((found & mask).sum() / max((found | mask).sum(), 1))
        for t, (fx, fy) in enumerate(zip(clip.flow_x, clip.flow_y)):
            magnitude = np.hypot(decode_flow(gray(fx), bound), decode_flow(gray(fy), bound))
            background.append(np.median(magnitude[~truth[t]]))
            moving.append(np.median(magnitude[truth[t]]))
    return {"iou": float(np.mean(ious)), "background_px": float(np.mean(background)),
            "object_px": float(np.mean(moving))}

