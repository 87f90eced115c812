"""EGTEA Gaze+ as distributed, read into clips (``python -m egomodel.prepare egtea EGTEA_ROOT --split N``).

```
EGTEA_ROOT/cropped_clips/<video>/<video>-<startms>-<endms>-F<start>-F<end>.mp4   one file per clip
EGTEA_ROOT/action_idx.txt            "<action name> <index>" per line, 1-based
EGTEA_ROOT/train_split{1,2,3}.txt    "<clip> <action> <verb> <noun>" per line, 1-based
EGTEA_ROOT/test_split{1,2,3}.txt
```

(the text files may also sit in ``EGTEA_ROOT/action_annotation/``). EGTEA has no users in its standard
split, so the split's two halves become the pseudo-users ``train`` and ``test``: train with
``data.test_users: [test]``. Labels are the action names as folder names (``Inspect/Read recipe`` ->
``Inspect_Read_recipe``); each clip file is a whole clip.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from egomodel.data.prepare.clip import ClipJob
from egomodel.data.prepare.manifest import folder_name, number_instances
from egomodel.data.prepare.run import file_digest
from egomodel.data.prepare.sources import PrepareError, VideoSegment, probe

_CLIP_RE = re.compile(r"(?P<video>.+)-\d+-\d+-F\d+-F\d+")


def _annotation(root: Path, name: str) -> Path:
    for folder in (root, root / "action_annotation"):
        if (folder / name).is_file():
            return folder / name
    raise PrepareError(f"EGTEA root {root} has no {name} (looked in {root} and {root / 'action_annotation'})")


def action_names(path: Path) -> dict[int, str]:
    """Action index -> folder name, from ``action_idx.txt``."""
    names: dict[int, str] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        *words, index = line.split()
        where = f"{path} line {line_no}"
        if not words or not index.isdigit():
            raise PrepareError(f"{where}: expected '<action name> <index>', got {line!r}")
        names[int(index)] = folder_name(" ".join(words), where)
    if len(set(names.values())) != len(names):
        raise PrepareError(f"{path}: two actions have the same folder name")
    return names


def egtea_jobs(
    root: Path | str, split: int, skip_bad: bool = False, report: Callable[[str], None] = print
) -> tuple[list[ClipJob], str]:
    """The clips of split ``split`` (users ``train`` and ``test``) and the digest of the files read."""
    root = Path(root)
    clips_dir = root / "cropped_clips"
    if not clips_dir.is_dir():
        raise PrepareError(f"EGTEA root {root} has no cropped_clips folder (expected "
                           f"{clips_dir}/<video>/<clip>.mp4)")
    index = _annotation(root, "action_idx.txt")
    splits = {user: _annotation(root, f"{user}_split{split}.txt") for user in ("train", "test")}
    names = action_names(index)
    rows: list[tuple[str, str, Path, str]] = []
    for user, path in splits.items():
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {line_no}"
            parts = line.split()
            match = _CLIP_RE.fullmatch(parts[0])
            if len(parts) < 2 or not parts[1].isdigit() or match is None:
                raise PrepareError(f"{where}: expected '<video>-<startms>-<endms>-F<start>-F<end> <action> ...', "
                                   f"got {line!r}")
            if int(parts[1]) not in names:
                raise PrepareError(f"{where}: action {parts[1]} is not in {index}")
            rows.append((user, names[int(parts[1])], clips_dir / match["video"] / f"{parts[0]}.mp4", where))
    jobs = []
    for (user, label, video, where), instance in zip(rows, number_instances((u, lb) for u, lb, _, _ in rows)):
        try:
            info = probe(video)
            if info.frames is None:
                raise PrepareError(f"video {video} does not say how many frames it has")
        except PrepareError as exc:
            if not skip_bad:
                raise PrepareError(f"{where}: {exc}") from None
            report(f"skipped (--skip-bad): {where}: {exc}")
            continue
        jobs.append(ClipJob(user, label, instance, VideoSegment(video, 1, info.frames, info.fps), where))
    return jobs, f"split {split} " + file_digest(index, *splits.values())
