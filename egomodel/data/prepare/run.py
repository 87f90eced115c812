"""A preparation run: claim the output root, run the clips that are not done (in processes here, as Ray
tasks in ``tuning.prepare``), show a progress bar, and end with a summary."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from egomodel.data.layout import FRAMES_DIR
from egomodel.data.prepare.clip import TMP_DIR, ClipJob, ClipResult, PrepareOptions, prepare_clip
from egomodel.data.prepare.sources import PrepareError

IDENTITY_FILE = "prepare.json"
Outcome = tuple[ClipJob, "ClipResult | Exception"]
Work = Callable[[ClipJob, Path, PrepareOptions], ClipResult]  # prepare_clip, or fill_clip
Executor = Callable[[Work, Sequence[ClipJob], Path, PrepareOptions], Iterator[Outcome]]


def file_digest(*paths: Path) -> str:
    """Short sha256 of files' bytes (a manifest, an annotation file): what a prepared root came from."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def identity(kind: str, source: str, options: PrepareOptions) -> dict:
    """What a root holds: the command, its source (such as the manifest's digest) and the settings. Rows
    skipped with --skip-bad do not change it, so a run resumes once their videos are fixed."""
    return {"kind": kind, "source": source, "options": asdict(options)}


def claim_root(root: Path, ident: dict) -> None:
    """Write ``prepare.json`` into a new or empty root, or check that the root holds this same data set."""
    record = root / IDENTITY_FILE
    if record.is_file():
        old = json.loads(record.read_text())
        if old != ident:
            diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
            raise PrepareError(f"output root {root} holds a different data set ({record}: {', '.join(diff)} differ); "
                               "choose another --out, or remove it")
        return
    if (root / FRAMES_DIR).is_dir() and any((root / FRAMES_DIR).iterdir()):
        raise PrepareError(f"output root {root} already holds a data set not written by this command "
                           f"(no {IDENTITY_FILE}); choose another --out")
    root.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(ident, indent=1, sort_keys=True) + "\n")


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one core per worker process


def local_executor(workers: int) -> Executor:
    """Clips in this process (``workers`` 1) or in a pool of processes."""

    def run(work: Work, jobs: Sequence[ClipJob], root: Path, options: PrepareOptions) -> Iterator[Outcome]:
        if workers <= 1:
            for job in jobs:
                try:
                    yield job, work(job, root, options)
                except Exception as exc:  # reported by the caller, with the job's origin
                    yield job, exc
            return
        # spawned, not forked: a fork of a process whose threads (PyTorch's, OpenCV's) hold locks can hang
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_init_worker) as pool:
            pending: dict[Future, ClipJob] = {pool.submit(work, job, root, options): job for job in jobs}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        job = pending.pop(future)
                        exc = future.exception()
                        yield job, exc if exc is not None else future.result()
            finally:
                for future in pending:
                    future.cancel()

    return run


@dataclass
class Summary:
    clips: Counter = field(default_factory=Counter)  # (user, label) -> clips in the root
    frames: int = 0
    written: int = 0
    already: int = 0
    bad: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def text(self) -> str:
        lines = [f"{'user':<12} {'label':<24} clips"]
        lines += [f"{u:<12} {lb:<24} {n}" for (u, lb), n in sorted(self.clips.items())]
        rate = self.frames / self.seconds if self.seconds else 0.0
        lines.append(f"{sum(self.clips.values())} clips ({self.written} written now, {self.already} already there), "
                     f"{self.frames} frames written in {self.seconds:.1f} s ({rate:.1f} frames/s)")
        lines += [f"bad, skipped: {b}" for b in self.bad]
        return "\n".join(lines)


def run(
    ident: dict | None,
    jobs: Sequence[ClipJob],
    root: Path | str,
    options: PrepareOptions,
    executor: Executor,
    skip_bad: bool = False,
    progress: bool = True,
    work: Work = prepare_clip,
) -> Summary:
    """Prepare ``jobs`` into ``root``: complete clips are skipped, the rest run ``work`` through ``executor``.
    A clip that fails stops the run (PrepareError naming it) unless ``skip_bad``, which reports and skips it.
    ``ident`` (None for ``fill``, which works in place) is checked against the root's ``prepare.json``."""
    root = Path(root)
    if ident is not None:
        claim_root(root, ident)
    shutil.rmtree(root / TMP_DIR, ignore_errors=True)  # what killed runs left
    summary = Summary()
    todo = []
    for job in jobs:
        if job.done(root):
            summary.already += 1
            summary.clips[job.user, job.label] += 1
        else:
            todo.append(job)
    start = time.perf_counter()
    bar = tqdm(total=sum(j.num_frames for j in todo), unit="frame", desc="preparing", disable=not progress,
               postfix=f"clips 0/{len(todo)}")
    try:
        for job, outcome in executor(work, todo, root, options):
            bar.update(job.num_frames)
            if isinstance(outcome, Exception):
                message = f"{job.origin} ({job.rel.as_posix()}): {outcome}"
                if not skip_bad:
                    raise PrepareError(message) from outcome
                summary.bad.append(message)
                bar.write(f"skipped (--skip-bad): {message}")
                continue
            summary.written += 1
            summary.frames += outcome.frames
            summary.clips[job.user, job.label] += 1
            bar.set_postfix_str(f"clips {summary.written + len(summary.bad)}/{len(todo)}")
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary
