"""The manifest of ``egomodel.prepare videos``: a CSV whose rows are clips of videos.

Columns: ``video,label,user`` and either ``start_frame,end_frame`` (1-based, inclusive, in the video's
own numbering) or ``start_s,end_s`` (seconds; a row may leave the frame columns empty and give seconds).
``video`` is relative to the manifest's folder or absolute; several rows may point into one video.
Instances are numbered 1, 2, ... per (user, label) in manifest order. Everything that can be checked
before decoding is checked here, each error naming its row.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from egomodel.data.prepare.clip import ClipJob
from egomodel.data.prepare.sources import PrepareError, VideoInfo, VideoSegment, probe, seconds_to_frames

REQUIRED = ("video", "label", "user")
FRAME_COLUMNS = ("start_frame", "end_frame")
SECOND_COLUMNS = ("start_s", "end_s")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def check_name(value: str, what: str, where: str) -> str:
    """A label or user name that can be a folder name on any system."""
    if not _NAME_RE.fullmatch(value):
        raise PrepareError(f"{where}: {what} {value!r} cannot be a folder name (use letters, digits and _ . + -, "
                           "starting with a letter or digit)")
    return value


def folder_name(text: str, where: str) -> str:
    """A data set's class name as a folder name: runs of other characters become ``_`` (``Inspect/Read
    recipe`` -> ``Inspect_Read_recipe``)."""
    return check_name(re.sub(r"[^A-Za-z0-9_.+-]+", "_", text.strip()).strip("_."), "name", where)


def _number(row: dict[str, str], column: str, where: str, kind: type) -> float | int | None:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise PrepareError(f"{where}: {column} {text!r} is not a{'n integer' if kind is int else ' number'}") from None


def number_instances(rows: Iterable[tuple[str, str]]) -> list[int]:
    """Instance numbers 1, 2, ... per (user, label), in order."""
    seen: dict[tuple[str, str], int] = defaultdict(int)
    out = []
    for key in rows:
        seen[key] += 1
        out.append(seen[key])
    return out


def read_manifest(
    path: Path | str, skip_bad: bool = False, report: Callable[[str], None] = print
) -> list[ClipJob]:
    """The clips of a manifest, every row checked (videos probed once each). With ``skip_bad``, a row whose
    video does not open or is too short is reported through ``report`` and left out; other errors stop."""
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"manifest {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        rows = list(reader)
    missing = [c for c in REQUIRED if c not in columns]
    has_frames = all(c in columns for c in FRAME_COLUMNS)
    has_seconds = all(c in columns for c in SECOND_COLUMNS)
    if missing or not (has_frames or has_seconds):
        need = missing + ([] if has_frames or has_seconds else ["start_frame,end_frame or start_s,end_s"])
        raise PrepareError(f"manifest {path} lacks column(s) {', '.join(need)} (has: {', '.join(columns)})")
    if not rows:
        raise PrepareError(f"manifest {path} has no rows")
    infos: dict[Path, VideoInfo | PrepareError] = {}
    kept: list[ClipJob] = []
    # numbered over every row, so a clip keeps its folder when a skipped row is fixed and the run resumed
    instances = number_instances(((r.get("user") or "").strip(), (r.get("label") or "").strip()) for r in rows)
    for line, row, instance in zip(range(2, len(rows) + 2), rows, instances):
        where = f"{path.name} row {line}"
        user = check_name((row.get("user") or "").strip(), "user", where)
        label = check_name((row.get("label") or "").strip(), "label", where)
        video_text = (row.get("video") or "").strip()
        if not video_text:
            raise PrepareError(f"{where}: empty video")
        video = Path(video_text).expanduser()
        video = video if video.is_absolute() else path.parent / video
        frames = [_number(row, c, where, int) for c in FRAME_COLUMNS] if has_frames else [None, None]
        seconds = [_number(row, c, where, float) for c in SECOND_COLUMNS] if has_seconds else [None, None]
        if None in frames and None in seconds:
            raise PrepareError(f"{where}: give start_frame and end_frame, or start_s and end_s")
        by_frames = None not in frames
        lo, hi = frames if by_frames else seconds
        if lo < (1 if by_frames else 0):
            unit = "frames are 1-based" if by_frames else "seconds start at 0"
            raise PrepareError(f"{where}: start {lo} is before the video's start ({unit})")
        if hi <= lo:
            raise PrepareError(f"{where}: end {hi} is not after start {lo}")
        if video not in infos:
            try:
                infos[video] = probe(video)
            except PrepareError as exc:
                infos[video] = exc
        info = infos[video]
        try:
            if isinstance(info, PrepareError):
                raise PrepareError(f"{where}: {info}")
            start, end = (int(lo), int(hi)) if by_frames else seconds_to_frames(lo, hi, info.fps)
            if info.frames is not None and end > info.frames:
                raise PrepareError(f"{where}: end frame {end} is past the end of {video} ({info.frames} frames)")
        except PrepareError as exc:
            if not skip_bad:
                raise
            report(f"skipped (--skip-bad): {exc}")
            continue
        kept.append(ClipJob(user, label, instance, VideoSegment(video, start, end, info.fps), where))
    return kept
