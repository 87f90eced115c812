"""The GTEA61 folder layout as the paper's authors stored it, read without decoding images.

```
<root>/processed_frames2/<user>/<class>/<inst>/rgb/rgb0001.png ...    (1-based, 4 digits; .png or .jpg)
<root>/processed_frames2/<user>/<class>/<inst>/mmaps/map0001.png ...  (motion maps, 0 or 255)
<root>/flow_x_processed/<user>/<class>/<inst>/flow_x_00001.png ...   (warp flow, 128 = no motion)
<root>/flow_y_processed/<user>/<class>/<inst>/flow_y_00001.png ...
```

GTEA61's users are ``S1`` ... ``S4``; a prepared data set's users are whatever its manifest names
(``P01``, ``train``, ...): every visible folder under ``processed_frames2`` that holds class folders is a user.

The real data set has quirks that this module absorbs so that nothing downstream sees them:
users may lack a class (labels are therefore by class *name* over all users), stray files sit
beside folders, duplicate frames such as ``rgb0003 (1).png`` exist (they are not frames), and
some motion maps are missing (the nearest existing map within ``max_reach`` frames is used).
Every error about bad data is a :class:`DataError` whose message names the offending path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

FRAMES_DIR = "processed_frames2"
FLOW_X_DIR = "flow_x_processed"
FLOW_Y_DIR = "flow_y_processed"

# Exact file-name patterns: anything else in these folders (``rgb0003 (1).png``, ``.DS_Store``,
# ``Thumbs.db``) is not a frame and is ignored.
_RGB_RE = re.compile(r"rgb(\d+)\.(?:png|jpg|jpeg)")  # JPEG frames: egomodel.prepare --frame-format jpg
_MAP_RE = re.compile(r"map(\d+)\.png")
_FLOW_X_RE = re.compile(r"flow_x_(\d+)\.png")
_FLOW_Y_RE = re.compile(r"flow_y_(\d+)\.png")


class DataError(ValueError):
    """Bad data set: message always names the offending path."""


@dataclass(frozen=True)
class Clip:
    """One video clip: where its frames, motion maps and flow images are. Nothing is decoded."""

    user: str
    label_name: str
    instance: str
    rgb: tuple[Path, ...]
    mmaps: dict[int, Path] = field(compare=False, hash=False)
    flow_x: tuple[Path, ...] = ()
    flow_y: tuple[Path, ...] = ()

    @property
    def num_frames(self) -> int:
        """Number of RGB frames (duplicates excluded)."""
        return len(self.rgb)

    @property
    def key(self) -> str:
        """Unique, human-readable identifier ``user/class/instance``."""
        return f"{self.user}/{self.label_name}/{self.instance}"

    @property
    def folder(self) -> Path:
        """The clip folder under ``processed_frames2`` (used to name the clip in errors)."""
        if self.rgb:
            return self.rgb[0].parent.parent
        return Path(FRAMES_DIR, self.user, self.label_name, self.instance)


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders ``S2`` before ``S10`` and ``2`` before ``10``; stable for any name."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p)


def _subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders, naturally sorted; stray files and hidden folders are ignored."""
    dirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(dirs, key=lambda p: _natural_key(p.name))


def _numbered(folder: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    """Frame number -> file for the files in ``folder`` whose whole name matches ``pattern``."""
    found: dict[int, Path] = {}
    for path in folder.iterdir():
        match = pattern.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        number = int(match.group(1))
        if number in found:
            raise DataError(f"two files for frame {number}: {found[number]} and {path}")
        found[number] = path
    return found


def _contiguous(folder: Path, frames: dict[int, Path], what: str) -> tuple[Path, ...]:
    """Frames sorted by number; they must be numbered 1..N so that index i is frame i+1."""
    numbers = sorted(frames)
    if numbers and numbers != list(range(1, len(numbers) + 1)):
        missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        detail = f"missing frame {missing[0]}" if missing else f"first frame is {numbers[0]}"
        raise DataError(f"{what} frames in {folder} are not numbered 1..{len(numbers)}: {detail}")
    return tuple(frames[n] for n in numbers)


def list_users(root: Path | str) -> list[str]:
    """Naturally sorted user folder names (``S1``, ``S2``, ... or any others) under ``<root>/processed_frames2``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist (or is not a folder)")
    frames_dir = root / FRAMES_DIR
    if not frames_dir.is_dir():
        raise DataError(f"data root {root} has no {FRAMES_DIR} folder: expected {frames_dir}")
    users = [p.name for p in _subdirs(frames_dir) if _subdirs(p)]  # a user folder holds class folders
    if not users:
        raise DataError(f"no user folders in {frames_dir} (expected one folder per user, such as S1 or P01)")
    return users


def _flow(root: Path, rel: Path, sub: str, pattern: re.Pattern[str], need: bool) -> tuple[Path, ...]:
    """The clip's flow images of one direction; empty when absent and not needed."""
    folder = root / sub / rel
    if not folder.is_dir():
        if need:
            raise DataError(f"flow folder {folder} does not exist")
        return ()
    files = _contiguous(folder, _numbered(folder, pattern), "flow")
    if need and not files:
        raise DataError(f"flow folder {folder} holds no {pattern.pattern} images")
    return files


def _scan_clip(
    root: Path, folder: Path, user: str, label: str, need_mmaps: bool, need_flow: bool, min_frames: int
) -> Clip:
    """Read one clip folder ``processed_frames2/<user>/<class>/<inst>``."""
    rgb_dir = folder / "rgb"
    if not rgb_dir.is_dir():
        raise DataError(f"clip folder {folder} has no rgb folder (expected {rgb_dir})")
    rgb = _contiguous(rgb_dir, _numbered(rgb_dir, _RGB_RE), "rgb")
    if len(rgb) < min_frames:
        raise DataError(f"clip folder {folder} has {len(rgb)} rgb frames, fewer than the {min_frames} needed")
    map_dir = folder / "mmaps"
    mmaps = _numbered(map_dir, _MAP_RE) if map_dir.is_dir() else {}
    if need_mmaps and not mmaps:
        raise DataError(f"clip folder {folder} has no motion maps (expected {map_dir}/map0001.png ...)")
    rel = Path(user, label, folder.name)
    flow_x = _flow(root, rel, FLOW_X_DIR, _FLOW_X_RE, need_flow)
    flow_y = _flow(root, rel, FLOW_Y_DIR, _FLOW_Y_RE, need_flow)
    if need_flow and len(flow_x) != len(flow_y):
        raise DataError(
            f"flow folders {root / FLOW_X_DIR / rel} and {root / FLOW_Y_DIR / rel} hold "
            f"{len(flow_x)} and {len(flow_y)} images"
        )
    return Clip(user, label, folder.name, rgb, dict(sorted(mmaps.items())), flow_x, flow_y)


def scan(
    root: Path | str,
    users: Sequence[str] | None = None,
    *,
    need_mmaps: bool = False,
    need_flow: bool = False,
    min_frames: int = 1,
) -> list[Clip]:
    """All clips of ``users`` (None: every user), ordered by user, class and instance.

    Checks only what can be checked without decoding images: folders exist, frames are numbered
    1..N with N >= ``min_frames``, and motion maps / flow exist where asked for.
    """
    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1, got {min_frames}")
    root = Path(root)
    available = list_users(root)
    frames_dir = root / FRAMES_DIR
    if users is None:
        chosen = available
    else:
        for user in users:
            if user not in available:
                raise DataError(f"user {user} not found in {frames_dir} (found: {', '.join(available)})")
        chosen = sorted(set(users), key=_natural_key)
    clips: list[Clip] = []
    for user in chosen:
        # Class folders are sorted by plain name, the same order that defines label indices.
        for class_dir in sorted(_subdirs(frames_dir / user), key=lambda p: p.name):
            for inst_dir in _subdirs(class_dir):
                clips.append(_scan_clip(root, inst_dir, user, class_dir.name, need_mmaps, need_flow, min_frames))
    if not clips:
        raise DataError(f"no clips found in {frames_dir} for users {', '.join(chosen)}")
    return clips


def class_names(clips: Iterable[Clip]) -> list[str]:
    """Sorted unique class names; a class's label index is its position in this list."""
    return sorted({clip.label_name for clip in clips})


def nearest_mmap(clip: Clip, frame: int, max_reach: int = 5) -> Path:
    """Motion map of 1-based ``frame``, or the nearest existing one: i, i+1, i-1, i+2, i-2, ...

    Some maps of the real data set are missing; like the reference code we borrow a neighbour's,
    but never from further than ``max_reach`` frames away.
    """
    if frame < 1:
        raise ValueError(f"frame numbers are 1-based, got {frame}")
    for distance in range(max_reach + 1):
        for candidate in (frame + distance, frame - distance):
            if candidate in clip.mmaps:
                return clip.mmaps[candidate]
    raise DataError(f"no motion map within {max_reach} frames of frame {frame} in {clip.folder / 'mmaps'}")


def sample_indices(num_frames: int, n: int) -> list[int]:
    """0-based indices of ``n`` frames out of ``num_frames``: floor(linspace(1, N, n, endpoint=False)) - 1.

    This is the reference code's sampling (frames are 1-based there), reproduced exactly.
    """
    if n < 1:
        raise ValueError(f"number of sampled frames must be >= 1, got {n}")
    if num_frames < n:
        raise DataError(f"clip has {num_frames} frames, fewer than the {n} frames to sample")
    points = np.floor(np.linspace(1, num_frames, n, endpoint=False)).astype(int) - 1
    return [int(i) for i in points]


def _clip_files(clip: Clip) -> Iterable[Path]:
    """Every file a clip refers to."""
    yield from clip.rgb
    yield from clip.mmaps.values()
    yield from clip.flow_x
    yield from clip.flow_y


def fingerprint(root: Path | str, clips: Iterable[Clip]) -> str:
    """Short sha256 over (relative path, size) of every file the clips refer to.

    Cheap (one ``stat`` per file, no decoding) and independent of where the data set is mounted
    and of the order of ``clips``; it changes when a file is added, removed or resized.
    """
    root = Path(root)
    entries: list[str] = []
    for path in {p for clip in clips for p in _clip_files(clip)}:
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise DataError(f"cannot stat {path}: {exc.strerror or exc}") from exc
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            rel = path.as_posix()
        entries.append(f"{rel}\t{size}\n")
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(entry.encode("utf-8"))
    return digest.hexdigest()[:16]


def open_image(path: Path, mode: str) -> Image.Image:
    """Decode an image fully, converted to ``mode``; any decoding failure becomes a DataError."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ... on bad files
        raise DataError(f"cannot read image {path}: {exc}") from exc


def load_gray(path: Path | str) -> np.ndarray:
    """A grayscale image (motion map or flow) as an HxW uint8 array."""
    return np.array(open_image(Path(path), "L"), dtype=np.uint8)


def load_rgb(path: Path | str) -> Image.Image:
    """An RGB frame as a PIL image in RGB mode."""
    return open_image(Path(path), "RGB")


def verify_image(path: Path | str) -> None:
    """Cheap integrity check (header and checksums, no full decode); DataError naming the file."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types on bad files
        raise DataError(f"cannot read image {path}: {exc}") from exc
