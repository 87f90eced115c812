"""EPIC-Kitchens-100 read into clips (``python -m egomodel.prepare epic ANNOTATIONS --videos DIR``).

```
ANNOTATIONS/EPIC_100_train.csv, EPIC_100_validation.csv
    participant_id, video_id, start_frame, stop_frame, verb, verb_class, noun, noun_class, ...
DIR/P01/videos/P01_01.MP4                         a video, or its distributed frames:
DIR/P01/rgb_frames/P01_01/frame_0000000001.jpg    a folder of them, or
DIR/P01/rgb_frames/P01_01.tar                     a tar of them (members ./frame_0000000001.jpg)
```

Each annotation row is a clip, frames ``start_frame..stop_frame`` of its video. Users are the two
annotation files (``train`` and ``validation``: train with ``data.test_users: [validation]``), or the
participants with ``--users participant``. Labels are the ``verb`` column, the ``noun`` column, or both
(``--label action``: ``take_plate``), as folder names (``onion:spring`` -> ``onion_spring``).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from egomodel.data.prepare.clip import ClipJob
from egomodel.data.prepare.manifest import folder_name, number_instances
from egomodel.data.prepare.run import file_digest
from egomodel.data.prepare.sources import FrameFiles, PrepareError, VideoInfo, VideoSegment, probe

FILES = {"train": "EPIC_100_train.csv", "validation": "EPIC_100_validation.csv"}
COLUMNS = ("participant_id", "video_id", "start_frame", "stop_frame", "verb", "noun")


def _label(row: dict[str, str], kind: str, where: str) -> str:
    if kind == "action":
        return folder_name(f"{row['verb']}_{row['noun']}", where)
    return folder_name(row[kind], where)


class _Videos:
    """Finds each video's frames under DIR (a video file, a frame folder or a frame tar), probing once."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.infos: dict[Path, VideoInfo] = {}

    def source(self, participant: str, video: str, start: int, stop: int) -> VideoSegment | FrameFiles:
        names = tuple(f"frame_{i:010d}.jpg" for i in range(start, stop + 1))
        folder = self.base / participant / "rgb_frames" / video
        candidates = [self.base / participant / "videos" / f"{video}{ext}" for ext in (".MP4", ".mp4")]
        for path in candidates:
            if path.is_file():
                if path not in self.infos:
                    self.infos[path] = probe(path)
                info = self.infos[path]
                if info.frames is not None and stop > info.frames:
                    raise PrepareError(f"stop_frame {stop} is past the end of {path} ({info.frames} frames)")
                return VideoSegment(path, start, stop, info.fps)
        if folder.is_dir():
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise PrepareError(f"{folder} has no {missing[0]}")
            return FrameFiles(tuple(str(folder / n) for n in names))
        tar = folder.with_suffix(".tar")
        if tar.is_file():
            return FrameFiles(names, tar)
        raise PrepareError(f"no video or frames for {video}: looked for {candidates[0]}, {folder}/ and {tar}")


def epic_jobs(
    annotations: Path | str,
    videos: Path | str,
    label: str = "verb",
    skip_bad: bool = False,
    report: Callable[[str], None] = print,
    users: str = "split",
) -> tuple[list[ClipJob], str]:
    """The clips of the annotation files found in ``annotations`` and the digest of those files."""
    annotations, videos = Path(annotations), Path(videos)
    files = {split: annotations / name for split, name in FILES.items() if (annotations / name).is_file()}
    if not files:
        raise PrepareError(f"{annotations} holds neither {FILES['train']} nor {FILES['validation']}")
    if not videos.is_dir():
        raise PrepareError(f"videos folder {videos} does not exist")
    rows: list[tuple[str, str, dict[str, str], str]] = []
    for split, path in files.items():
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise PrepareError(f"{path} lacks column(s) {', '.join(missing)}")
            for line, row in enumerate(reader, start=2):
                where = f"{path.name} row {line}"
                user = split if users == "split" else folder_name(row["participant_id"], where)
                rows.append((user, _label(row, label, where), row, where))
    finder = _Videos(videos)
    jobs = []
    for (user, name, row, where), instance in zip(rows, number_instances((u, lb) for u, lb, _, _ in rows)):
        try:
            start, stop = int(row["start_frame"]), int(row["stop_frame"])
        except ValueError:
            raise PrepareError(f"{where}: start_frame / stop_frame are not integers") from None
        if start < 1 or stop <= start:
            raise PrepareError(f"{where}: frames {start}-{stop} are not a clip (1-based, stop after start)")
        try:
            source = finder.source(row["participant_id"], row["video_id"], start, stop)
        except PrepareError as exc:
            if not skip_bad:
                raise PrepareError(f"{where}: {exc}") from None
            report(f"skipped (--skip-bad): {where}: {exc}")
            continue
        jobs.append(ClipJob(user, name, instance, source, where))
    return jobs, f"{label} by {users} " + file_digest(*files.values())
