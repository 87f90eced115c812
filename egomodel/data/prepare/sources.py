"""Where a clip's frames come from: a segment of a video file (PyAV, seeking to the segment) or numbered
image files (a folder, or members of a tar as EPIC-Kitchens distributes its frames)."""

from __future__ import annotations

import math
import tarfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from egomodel.data.layout import DataError


class PrepareError(DataError):
    """Bad input to data preparation: the message names the manifest row, video or file."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int | None  # None when the container does not say
    fps: float


def probe(video: Path) -> VideoInfo:
    """Frame count and rate of a video; PrepareError when it does not open or decodes no frame."""
    import av

    if not video.is_file():
        raise PrepareError(f"video {video} does not exist")
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise PrepareError(f"video {video} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise PrepareError(f"video {video} does not say its frame rate")
            frames = int(stream.frames) or None
            if frames is None and stream.duration and stream.time_base:
                frames = int(round(float(stream.duration * stream.time_base) * float(rate)))
            if next(container.decode(stream), None) is None:
                raise PrepareError(f"video {video} decodes no frames")
            return VideoInfo(frames, float(rate))
    except PrepareError:
        raise
    except Exception as exc:  # PyAV raises its own error types (InvalidDataError, ...) on bad files
        raise PrepareError(f"video {video} does not open: {exc}") from exc


def seconds_to_frames(start_s: float, end_s: float, fps: float) -> tuple[int, int]:
    """1-based inclusive frames of the interval [start_s, end_s): frame k shows time (k-1)/fps."""
    start = int(math.floor(start_s * fps + 1e-6)) + 1
    return start, max(start, int(math.ceil(end_s * fps - 1e-6)))


def resize_short(frame: np.ndarray, short_side: int | None) -> np.ndarray:
    """The frame with its short side at ``short_side`` px (area filter), or unchanged for None."""
    if short_side is None:
        return frame
    h, w = frame.shape[:2]
    scale = short_side / min(h, w)
    if scale == 1:
        return frame
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


@dataclass(frozen=True)
class VideoSegment:
    """Frames ``start``..``end`` (1-based, inclusive, the video's own numbering) of a video file."""

    video: Path
    start: int
    end: int
    fps: float

    @property
    def num_frames(self) -> int:
        return self.end - self.start + 1

    def read(self) -> list[np.ndarray]:
        """RGB uint8 frames; seeks to the key frame before the segment, then decodes forward."""
        import av

        frames: list[np.ndarray] = []
        last = 0
        with av.open(str(self.video)) as container:
            stream = container.streams.video[0]
            base = stream.start_time or 0
            tb = float(stream.time_base)
            target = (self.start - 1) / self.fps
            if self.start > 1:
                container.seek(base + int(target / tb), stream=stream, backward=True)
            counted = 0
            for frame in container.decode(stream):
                if frame.pts is None:  # no timestamps: count frames (only valid from the start)
                    counted += 1
                    index = counted
                else:
                    index = int(round((frame.pts - base) * tb * self.fps)) + 1
                last = index
                if index < self.start:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                if index >= self.end:
                    break
        if len(frames) != self.num_frames:
            raise PrepareError(f"video {self.video}: frames {self.start}-{self.end} asked, but the video ends at "
                               f"frame {last}")
        return frames


@dataclass(frozen=True)
class FrameFiles:
    """Numbered image files: paths in a folder, or member names inside ``tar`` (EPIC's frame tars)."""

    files: tuple[str, ...]
    tar: Path | None = None

    @property
    def num_frames(self) -> int:
        return len(self.files)

    def read(self) -> list[np.ndarray]:
        if self.tar is None:
            return [_decode(Path(f).read_bytes() if Path(f).is_file() else b"", f) for f in self.files]
        with tarfile.open(self.tar) as archive:
            out = []
            for name in self.files:
                data = None
                for member in (name, f"./{name}"):  # EPIC's tars name their members ./frame_...
                    try:
                        data = archive.extractfile(member)
                        break
                    except KeyError:
                        continue
                if data is None:
                    raise PrepareError(f"{self.tar} has no frame {name}")
                out.append(_decode(data.read(), f"{self.tar}:{name}"))
            return out


def _decode(data: bytes, name: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise PrepareError(f"cannot read frame {name}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
