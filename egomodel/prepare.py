"""``python -m egomodel.prepare {videos,fill,egtea,epic} ... --out ROOT``: raw videos (or distributed frames)
to the GTEA61 layout the loader reads, with warp flow and motion maps (docs/prepare.md).

Every command is resumable (rerun it: complete clips are skipped, a clip is published whole), shows a
progress bar and ends with a summary. ``python -m tuning.prepare`` takes the same arguments plus
``--address`` and runs the clips as Ray tasks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from egomodel.data.layout import DataError
from egomodel.data.prepare.clip import FRAME_FORMATS, ClipJob, PrepareOptions, prepare_clip
from egomodel.data.prepare.motion import FLOW_METHODS, MotionSettings
from egomodel.data.prepare.run import Executor, file_digest, identity, local_executor, run

DATASET_SHORT_SIDE = 256  # egtea and epic default: full-resolution PNGs of EPIC would take tens of TB


def _add_common(p: argparse.ArgumentParser, short_side: int | None, writes_root: bool = True) -> None:
    """Options every command shares; ``fill`` works in an existing root, at its frames' size."""
    if writes_root:
        p.add_argument("--out", type=Path, required=True, help="output root (GTEA61 layout)")
        default = "the video's size" if short_side is None else str(short_side)
        p.add_argument("--short-side", type=int, default=short_side, help=f"resize frames to this short side "
                       f"(default {default})")
        p.add_argument("--frame-format", choices=FRAME_FORMATS, default="png", help="RGB frames as png (default) "
                       "or jpg (about a third of the disk, quality 95)")
    else:
        p.set_defaults(out=None, short_side=None, frame_format="png")
    p.add_argument("--flow", choices=FLOW_METHODS, default="tvl1", help="TV-L1 (default; the field's warp flow) "
                   "or DIS (much faster, less exact on textureless objects)")
    p.add_argument("--workers", type=int, default=1, help="processes, one core each (default 1)")
    p.add_argument("--map-threshold", type=float, default=1.5, help="px of compensated flow above the frame's "
                   "median that count as moving (default 1.5)")
    p.add_argument("--bound", type=float, default=20.0, help="flow images clip at +-bound px (default 20)")
    p.add_argument("--no-compensation", action="store_true", help="keep the camera's motion in flow and maps "
                   "(for comparison only)")
    p.add_argument("--skip-bad", action="store_true", help="report and skip bad videos or clips instead of stopping")
    p.add_argument("--no-progress", action="store_true")


def build_parser(prog: str = "python -m egomodel.prepare",
                 extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.ArgumentParser:
    """The commands' parser; ``extra`` adds options to every command (``tuning.prepare``: ``--address``)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("videos", help="clips listed in a manifest CSV (video,label,user,start_frame,end_frame)")
    p.add_argument("manifest", type=Path)
    _add_common(p, None)
    p = sub.add_parser("fill", help="compute the motion maps and flow a GTEA61-layout root lacks, in place")
    p.add_argument("root", type=Path)
    _add_common(p, None, writes_root=False)
    p = sub.add_parser("egtea", help="EGTEA Gaze+ as distributed (cropped_clips/, action_idx.txt, splits)")
    p.add_argument("egtea_root", type=Path)
    p.add_argument("--split", type=int, choices=(1, 2, 3), default=1)
    _add_common(p, DATASET_SHORT_SIDE)
    p = sub.add_parser("epic", help="EPIC-Kitchens-100 (EPIC_100_train.csv / EPIC_100_validation.csv)")
    p.add_argument("annotations", type=Path, help="folder holding EPIC_100_train.csv and EPIC_100_validation.csv")
    p.add_argument("--videos", type=Path, required=True, help="folder of P01/videos/P01_01.MP4 ... or of "
                   "P01/rgb_frames/P01_01/ (or P01_01.tar)")
    p.add_argument("--label", choices=("verb", "noun", "action"), default="verb")
    p.add_argument("--users", choices=("split", "participant"), default="split", help="users are the annotation "
                   "files (train, validation; default) or the participants (P01, ...)")
    _add_common(p, DATASET_SHORT_SIDE)
    if extra is not None:
        for command in sub.choices.values():
            extra(command)
    return parser


def options_from(args: argparse.Namespace) -> PrepareOptions:
    motion = MotionSettings(args.flow, args.bound, args.map_threshold, not args.no_compensation)
    return PrepareOptions(motion, args.short_side, args.frame_format)


@dataclass(frozen=True)
class Plan:
    """What a command will do: the root, its identity, the clips and the settings."""

    root: Path
    ident: dict | None  # None for fill, which works in an existing root
    jobs: list[ClipJob]
    options: PrepareOptions


def plan(args: argparse.Namespace) -> Plan:
    """Read and check the command's input (every error before any work starts) into a :class:`Plan`."""
    options = options_from(args)
    report = print
    if args.command == "videos":
        from egomodel.data.prepare.manifest import read_manifest

        jobs = read_manifest(args.manifest, args.skip_bad, report)
        return Plan(args.out, identity("videos", file_digest(args.manifest), options), jobs, options)
    if args.command == "egtea":
        from egomodel.data.prepare.egtea import egtea_jobs

        jobs, source = egtea_jobs(args.egtea_root, args.split, args.skip_bad, report)
        return Plan(args.out, identity("egtea", source, options), jobs, options)
    if args.command == "epic":
        from egomodel.data.prepare.epic import epic_jobs

        jobs, source = epic_jobs(args.annotations, args.videos, args.label, args.skip_bad, report, args.users)
        return Plan(args.out, identity("epic", source, options), jobs, options)
    raise ValueError(f"no plan for {args.command}")


def execute(args: argparse.Namespace, executor: Executor,
            before: Callable[[Path, list[ClipJob]], None] | None = None) -> int:
    """Run a parsed command with ``executor`` (processes here, Ray tasks in tuning.prepare); print the summary.
    ``before(root, jobs)`` runs once the input is read and checked, before any clip."""
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.command == "fill":
        from egomodel.data.prepare.fill import fill_clip, fill_jobs

        p, work = Plan(args.root, None, fill_jobs(args.root), options_from(args)), fill_clip
    else:
        p, work = plan(args), prepare_clip
    if before is not None:
        before(p.root, p.jobs)
    summary = run(p.ident, p.jobs, p.root, p.options, executor, args.skip_bad, not args.no_progress, work)
    print(summary.text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: execute(args, local_executor(args.workers)))


def guarded(body) -> int:
    """Bad input prints one line and exits 2; an interrupt says how to resume."""
    try:
        return body()
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue (complete clips are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
