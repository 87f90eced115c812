"""A small synthetic data set in the GTEA61 layout, for tests and for runs without real data.

Each class is an (object, motion) pair such as ``shake_cup`` or ``stir_cup``: objects differ by
shape and colour, motions are ``shake`` (vertical oscillation), ``stir`` (circular motion) and
``slide`` (horizontal translation, bouncing off the borders). Some classes differ by motion alone,
so appearance is not enough. Users S1..S4 film in different scenes (background tint, stripe
pattern and object lighting per user), which gives the domain shift between training and test users.

How a clip is drawn, and why its motion maps and flow are exact, is :mod:`egomodel.data.synthetic_scene`;
this module writes clips into the folders of a data set (:func:`generate`), keeps a cached default set
(:func:`default_root`), adds the real data set's quirks (:func:`add_quirks`), and is the command
``python -m egomodel.data.synthetic OUT``. Output is a pure function of the arguments: same arguments,
same bytes. With ``--ego-motion`` the command writes raw videos from a moving camera, a manifest and the
true masks instead (:mod:`egomodel.data.synthetic_ego`), the input of ``python -m egomodel.prepare``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from egomodel.data.layout import FLOW_X_DIR, FLOW_Y_DIR, FRAMES_DIR
from egomodel.data.packed import cache_base
from egomodel.data.synthetic_scene import CLASS_ORDER, MIN_SIDE, plan_classes, render_clip

GENERATOR_VERSION = 1
MARKER = ".complete"  # written last into a cached data set; its absence means "half-written"


@dataclass(frozen=True)
class Quirks:
    """What :func:`add_quirks` changed, so that tests can check each quirk is absorbed."""

    stray: tuple[Path, ...]
    duplicates: tuple[Path, ...]
    removed_map: Path
    removed_frame: int


def missing_class(n: int, users: int) -> str | None:
    """The class that S1 lacks (like ``put_tea`` in GTEA61): the last planned one, from 3 classes
    and 2 users on (with one user the class would vanish from the data set altogether)."""
    if n >= 3 and users >= 2:
        return plan_classes(n)[-1].name
    return None


def _save(array: np.ndarray, path: Path) -> None:
    """Write a PNG deterministically (PIL writes no timestamps); low compression for speed."""
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def generate(
    out: Path | str,
    classes: int = 8,
    clips_per_class: int = 4,
    frames: int = 12,
    size: tuple[int, int] = (80, 64),
    seed: int = 0,
    users: int = 4,
) -> Path:
    """Write a synthetic data set into ``out`` (which must be empty or absent) and return it.

    ``size`` is (width, height). Each clip is seeded from (seed, user, class, clip), so a clip does
    not change when other arguments (such as the number of classes) do.
    """
    width, height = size
    plan = plan_classes(classes)
    if clips_per_class < 1 or users < 1:
        raise ValueError(f"need at least one clip per class and one user, got {clips_per_class} and {users}")
    if frames < 2:
        raise ValueError(f"need at least 2 frames per clip, got {frames}")
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"frame size must be at least {MIN_SIDE}x{MIN_SIDE}, got {width}x{height}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"output folder {root} is not empty")
    skipped = missing_class(classes, users)

    for user in range(users):
        user_name = f"S{user + 1}"
        for cls in plan:
            if user == 0 and cls.name == skipped:
                continue
            for clip in range(clips_per_class):
                rng = np.random.default_rng(np.random.SeedSequence([seed, user, cls.index, clip]))
                rgb, maps, flow_x, flow_y = render_clip(cls, user, width, height, frames, rng)
                rel = Path(user_name, cls.name, str(clip + 1))
                folders = {
                    "rgb": root / FRAMES_DIR / rel / "rgb",
                    "mmaps": root / FRAMES_DIR / rel / "mmaps",
                    "fx": root / FLOW_X_DIR / rel,
                    "fy": root / FLOW_Y_DIR / rel,
                }
                for folder in folders.values():
                    folder.mkdir(parents=True, exist_ok=True)
                for t in range(frames):
                    _save(rgb[t], folders["rgb"] / f"rgb{t + 1:04d}.png")
                    _save(maps[t], folders["mmaps"] / f"map{t + 1:04d}.png")
                    _save(flow_x[t], folders["fx"] / f"flow_x_{t + 1:05d}.png")
                    _save(flow_y[t], folders["fy"] / f"flow_y_{t + 1:05d}.png")
    return root


def default_root(
    cache_dir: Path | str | None = None,
    *,
    classes: int = 8,
    clips_per_class: int = 4,
    frames: int = 12,
    size: tuple[int, int] = (80, 64),
    seed: int = 0,
    users: int = 4,
) -> Path:
    """Root of a cached synthetic data set, generated on first use.

    The cache folder is ``cache_dir``, else ``$EGOMODEL_CACHE``, else ``~/.cache/egomodel``; the set
    lives in ``synthetic-<hash of the arguments and generator version>`` inside it. It is generated
    in a temporary folder, marked complete, then renamed into place, so concurrent callers (parallel
    trials) and interrupted runs never see a half-written set; a folder without the marker is
    regenerated.
    """
    params = {
        "version": GENERATOR_VERSION,
        "classes": classes,
        "clips_per_class": clips_per_class,
        "frames": frames,
        "size": list(size),
        "seed": seed,
        "users": users,
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    base = Path(cache_dir) if cache_dir else cache_base()
    root = base / f"synthetic-{digest}"
    if (root / MARKER).is_file():
        return root
    if root.exists():
        shutil.rmtree(root)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".synthetic-{digest}-", dir=base))
    try:
        generate(tmp, classes, clips_per_class, frames, size, seed, users)
        (tmp / MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / MARKER).is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


def add_quirks(root: Path | str) -> Quirks:
    """Add the real data set's quirks to a generated set: stray files beside user folders and in a
    class folder, duplicate frames ``rgb0003 (1).png`` / ``map0003 (1).png`` in S1's first clip, and
    one missing motion map (not the first) in the last user's first clip."""
    root = Path(root)
    frames_dir = root / FRAMES_DIR
    users = sorted((p for p in frames_dir.iterdir() if p.is_dir()), key=lambda p: int(p.name[1:]))
    first_class = sorted(p for p in users[0].iterdir() if p.is_dir())[0]

    stray = (
        frames_dir / ".DS_Store",
        frames_dir / "notes.txt",
        first_class / ".DS_Store",
        first_class / "notes.txt",
        root / FLOW_X_DIR / users[0].name / "notes.txt",
    )
    for path in stray:
        path.write_bytes(b"not part of the data set\n")

    clip = first_class / "1"
    frame = min(3, len(list((clip / "rgb").glob("rgb*.png"))))
    duplicates = (
        clip / "rgb" / f"rgb{frame:04d} (1).png",
        clip / "mmaps" / f"map{frame:04d} (1).png",
    )
    shutil.copyfile(clip / "rgb" / f"rgb{frame:04d}.png", duplicates[0])
    shutil.copyfile(clip / "mmaps" / f"map{frame:04d}.png", duplicates[1])

    last_clip = sorted(p for p in users[-1].iterdir() if p.is_dir())[0] / "1"
    removed = last_clip / "mmaps" / f"map{frame:04d}.png"
    removed.unlink()
    return Quirks(stray, duplicates, removed, frame)


def _parse_size(text: str) -> tuple[int, int]:
    """``WxH`` -> (W, H)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 80x64, got {text!r}") from exc
    return width, height


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m egomodel.data.synthetic OUT [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m egomodel.data.synthetic",
        description="Write a synthetic data set in the GTEA61 layout.",
    )
    parser.add_argument("out", type=Path, help="output folder (must be empty or absent)")
    parser.add_argument("--classes", type=int, default=8, help=f"2..{len(CLASS_ORDER)} (default 8)")
    parser.add_argument("--clips-per-class", type=int, default=4, help="clips per class and user")
    parser.add_argument("--frames", type=int, default=12, help="frames per clip (>= 2)")
    parser.add_argument("--size", type=_parse_size, default=(80, 64), help="WxH (default 80x64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=4, help="number of users S1..Sn (default 4)")
    parser.add_argument("--ego-motion", action="store_true", help="write raw videos filmed by a panning, zooming, "
                        "wobbling camera (users P01..Pn), manifest.csv and the true masks, for egomodel.prepare")
    args = parser.parse_args(argv)
    if args.ego_motion:
        from egomodel.data.synthetic_ego import generate_ego

        try:
            root = generate_ego(args.out, args.classes, args.clips_per_class, args.frames, args.size, args.seed,
                                args.users)
        except (ValueError, FileExistsError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {root}/videos, {root}/manifest.csv and {root}/masks; next: "
              f"python -m egomodel.prepare videos {root}/manifest.csv --out ROOT")
        return 0
    try:
        root = generate(args.out, args.classes, args.clips_per_class, args.frames, args.size, args.seed, args.users)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = [c.name for c in plan_classes(args.classes)]
    skipped = missing_class(args.classes, args.users)
    note = f"; S1 lacks {skipped}" if skipped else ""
    print(f"wrote {len(names)} classes x {args.clips_per_class} clips x {args.users} users to {root}{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
