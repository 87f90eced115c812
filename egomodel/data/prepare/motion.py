"""Warp flow and motion maps of consecutive frames, computed the way the field computes them.

Warp flow (IDT, dense_flow): the camera's motion between frames t and t+1 is a homography fitted with
RANSAC (1 px) to feature matches (ORB here; SURF is not in OpenCV's free build) plus matches sampled
from the optical flow at corners; it is kept only with more than 50 matches and more than 25 inliers,
else the camera is taken as still. The homography's own flow is subtracted from the optical flow, which
leaves the motion of things that move in the scene. It is stored as uint8, 128 = no motion, clipped at
``±bound`` pixels (20, as dense_flow).

Motion maps approximate the paper's IDT-based segmentation: a pixel moves when its compensated flow's
magnitude exceeds the frame's background level (the median) by ``threshold`` pixels; small specks are
opened away and holes closed. Pixels that the camera's motion takes out of the next frame are never
marked (they have no counterpart to move to).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FLOW_METHODS = ("tvl1", "dis")
MIN_MATCHES = 50  # dense_flow: fit a homography only with more matches than this ...
MIN_INLIERS = 25  # ... and keep it only with more RANSAC inliers than this


@dataclass(frozen=True)
class MotionSettings:
    """How flow and maps are computed; part of a prepared root's identity (``prepare.json``)."""

    flow: str = "tvl1"
    bound: float = 20.0  # px: flow images clip at +-bound (dense_flow's default)
    threshold: float = 1.5  # px above the frame's median compensated-flow magnitude: moving
    compensate: bool = True  # remove the camera's motion (False: plain flow, for comparison)

    def __post_init__(self) -> None:
        if self.flow not in FLOW_METHODS:
            raise ValueError(f"flow method must be one of {', '.join(FLOW_METHODS)}, got {self.flow!r}")
        if self.bound <= 0 or self.threshold <= 0:
            raise ValueError(f"bound and threshold must be positive, got {self.bound} and {self.threshold}")


def _flow_engine(method: str) -> cv2.DenseOpticalFlow:
    if method == "tvl1":
        return cv2.optflow.DualTVL1OpticalFlow_create()
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def optical_flow(prev: np.ndarray, curr: np.ndarray, method: str) -> np.ndarray:
    """(H, W, 2) float32 flow prev -> curr of two gray uint8 frames."""
    return _flow_engine(method).calc(prev, curr, None)


def _feature_matches(prev: np.ndarray, curr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ORB keypoints matched prev -> curr (cross-checked Hamming matches)."""
    orb = cv2.ORB_create(nfeatures=1000, edgeThreshold=15, patchSize=15)
    kp1, des1 = orb.detectAndCompute(prev, None)
    kp2, des2 = orb.detectAndCompute(curr, None)
    if des1 is None or des2 is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(des1, des2)
    a = np.float32([kp1[m.queryIdx].pt for m in matches]).reshape(-1, 2)
    b = np.float32([kp2[m.trainIdx].pt for m in matches]).reshape(-1, 2)
    return a, b


def _flow_matches(prev: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corners of ``prev`` and where the flow takes them."""
    corners = cv2.goodFeaturesToTrack(prev, maxCorners=1000, qualityLevel=0.001, minDistance=3)
    if corners is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    a = corners.reshape(-1, 2)
    xi = np.clip(np.rint(a[:, 0]).astype(int), 0, flow.shape[1] - 1)
    yi = np.clip(np.rint(a[:, 1]).astype(int), 0, flow.shape[0] - 1)
    return a, (a + flow[yi, xi]).astype(np.float32)


def camera_homography(prev: np.ndarray, curr: np.ndarray, flow: np.ndarray) -> np.ndarray | None:
    """The camera's homography prev -> curr, or None when the matches cannot support one."""
    fa, fb = _feature_matches(prev, curr)
    ga, gb = _flow_matches(prev, flow)
    a, b = np.concatenate([fa, ga]), np.concatenate([fb, gb])
    if len(a) <= MIN_MATCHES:
        return None
    h, inliers = cv2.findHomography(a, b, cv2.RANSAC, 1.0)
    if h is None or int(inliers.sum()) <= MIN_INLIERS:
        return None
    return h


def homography_flow(h: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 2): where the homography moves each pixel, minus where it was."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    points = np.stack([xx, yy], axis=-1).reshape(-1, 1, 2)
    moved = cv2.perspectiveTransform(points, h).reshape(height, width, 2)
    return moved - np.stack([xx, yy], axis=-1)


def warp_flow(prev: np.ndarray, curr: np.ndarray, settings: MotionSettings) -> tuple[np.ndarray, np.ndarray]:
    """(flow with the camera's motion removed, mask of pixels the camera keeps in view) for prev -> curr."""
    flow = optical_flow(prev, curr, settings.flow)
    height, width = prev.shape
    visible = np.ones((height, width), dtype=bool)
    if not settings.compensate:
        return flow, visible
    h = camera_homography(prev, curr, flow)
    if h is None:
        return flow, visible
    camera = homography_flow(h, height, width)
    x = np.arange(width, dtype=np.float32)[None, :] + camera[..., 0]
    y = np.arange(height, dtype=np.float32)[:, None] + camera[..., 1]
    visible = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    return flow - camera, visible


def encode_flow(flow: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 x and y images: 128 + v * 127.5 / bound, clipped to 0..255 (128 = no motion)."""
    scaled = np.clip(np.rint(128.0 + flow * (127.5 / bound)), 0, 255).astype(np.uint8)
    return scaled[..., 0], scaled[..., 1]


def decode_flow(image: np.ndarray, bound: float) -> np.ndarray:
    """Pixels of motion from a uint8 flow image (the inverse of :func:`encode_flow`, up to rounding)."""
    return (image.astype(np.float32) - 128.0) * (bound / 127.5)


def closing_size(height: int, width: int) -> int:
    """Side of the square that closes holes in a map: 9 at 240 px short side, odd, at least 3."""
    return max(3, int(round(min(height, width) / 27)) | 1)


def motion_map(flow: np.ndarray, visible: np.ndarray, threshold: float) -> np.ndarray:
    """0/255 uint8 map of the pixels whose flow magnitude exceeds the median by ``threshold`` px."""
    magnitude = np.linalg.norm(flow, axis=-1)
    level = float(np.median(magnitude[visible])) if visible.any() else 0.0
    moving = ((magnitude > level + threshold) & visible).astype(np.uint8)
    moving = cv2.morphologyEx(moving, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    k = closing_size(*moving.shape)
    moving = cv2.morphologyEx(moving, cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    return moving * np.uint8(255)


def clip_motion(
    gray: list[np.ndarray], settings: MotionSettings
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Motion maps (one per frame) and flow-x / flow-y images (one per consecutive pair) of a clip.

    The map of frame t comes from the flow t -> t+1; the last frame's from the flow back to t-1.
    """
    if len(gray) < 2:
        raise ValueError(f"a clip needs at least 2 frames for flow, got {len(gray)}")
    maps, flow_x, flow_y = [], [], []
    for t in range(len(gray) - 1):
        flow, visible = warp_flow(gray[t], gray[t + 1], settings)
        fx, fy = encode_flow(flow, settings.bound)
        flow_x.append(fx)
        flow_y.append(fy)
        maps.append(motion_map(flow, visible, settings.threshold))
    back, visible = warp_flow(gray[-1], gray[-2], settings)
    maps.append(motion_map(back, visible, settings.threshold))
    return maps, flow_x, flow_y
