"""The backbones' ImageNet weights: fetched once per machine by an explicit command, checked before use.

    python -m egomodel.weights fetch [--backbone resnet34|resnet18|all] [--from URL|PATH|s3://...]
    python -m egomodel.weights check [--backbone resnet34|resnet18|all]

``fetch`` writes torchvision's file (e.g. ``resnet34-b627a593.pth``) into torch hub's cache,
``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints`` by default), where
:func:`egomodel.model.backbone.build_resnet` reads it. The 8 hex digits after the dash are the start of
the file's SHA-256: a download or copy whose hash does not start with them is refused, and nothing is
left behind (the file is written under a temporary name in the same folder and renamed when whole).

``--from`` (for machines without internet access) names where the file is instead of torchvision's
URL: a local folder or file, an ``http(s)://`` mirror or an ``s3://`` location. A location ending in
``.pth`` is the file itself (so it names one backbone); any other is a folder, to which the
torchvision file name is appended. ``s3://`` uses boto3, or the ``aws`` command when boto3 is missing.

The search (``tuning.execution.weights_check``) and each trial call :func:`check_weights` before any
training, so a node without the weights is named at once, with this command.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import os
import shutil
import subprocess
import sys
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch

from egomodel.model.backbone import BACKBONES
from egomodel.model.imagenet import (
    WeightsError,
    check_weights,
    file_name,
    hash_prefix,
    imagenet_weights_path,
    intact,
    sha256,
)

FROM_ENV = "EGOSEARCH_WEIGHTS_FROM"  # the cluster files pass it as --from (cluster.env)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One fetch at a time per cache folder (several Ray workers of one node may start together)."""
    fd = os.open(folder, os.O_RDONLY)  # the folder itself: no lock file left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _is_file_location(source: str) -> bool:
    return source.rstrip("/").endswith(".pth") and not source.endswith("/")


def _location(source: str, name: str) -> str:
    """The file ``name`` at ``source``: ``source`` itself when it names a .pth file, else inside it."""
    if "://" in source:
        return source if _is_file_location(source) else source.rstrip("/") + "/" + name
    path = Path(source).expanduser()
    return str(path / name if path.is_dir() else path)


def _copy_to(tmp: Path, location: str) -> None:
    """Bring the file at ``location`` (a local path or s3:// URI) to ``tmp``."""
    if not location.startswith("s3://"):
        try:
            shutil.copyfile(location, tmp)
        except OSError as e:
            raise WeightsError(f"cannot copy {location}: {e.strerror or e}") from None
        return
    try:
        import boto3
    except ImportError:
        boto3 = None
    if boto3 is not None:
        bucket, _, key = location.removeprefix("s3://").partition("/")
        try:
            boto3.client("s3").download_file(bucket, key, str(tmp))
        except Exception as e:  # noqa: BLE001 - botocore's errors have no common base worth importing
            raise WeightsError(f"cannot download {location}: {type(e).__name__}: {e}") from None
        return
    if shutil.which("aws") is None:
        raise WeightsError(f"cannot download {location}: neither boto3 nor the aws command is installed "
                           "(pip install boto3)")
    r = subprocess.run(["aws", "s3", "cp", "--only-show-errors", location, str(tmp)], capture_output=True, text=True)
    if r.returncode != 0:
        raise WeightsError(f"cannot download {location}: aws s3 cp: {(r.stderr or r.stdout).strip()}")


def fetch_file(source: str, name: str, dest_dir: Path, progress: bool = True) -> tuple[Path, bool]:
    """Put the file ``name`` (which carries its SHA-256 prefix) from ``source`` into ``dest_dir``; the path
    and whether it was written (False: it was already there, intact). Only a whole file whose hash matches
    ever appears under ``name``; on any error nothing is left in ``dest_dir``."""
    prefix = hash_prefix(name)
    if "://" in source and not source.startswith(("http://", "https://", "s3://")):
        raise WeightsError(f"--from {source}: give a folder or file path, an http(s):// URL or an s3:// URI")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dst = dest_dir / name
    location = _location(source, name)
    with _locked(dest_dir):
        if dst.exists() and intact(dst, prefix) is None:
            return dst, False
        if location.startswith(("http://", "https://")):
            try:  # torch writes DST.<uuid>.partial beside dst, checks the hash, renames; removes it on error
                torch.hub.download_url_to_file(location, str(dst), hash_prefix=prefix, progress=progress)
            except RuntimeError as e:
                raise WeightsError(f"{location} is not the expected file (SHA-256 should start with {prefix}): "
                                   f"{e}; nothing was written to {dest_dir}") from None
            except (OSError, http.client.HTTPException, ValueError) as e:
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                raise WeightsError(f"cannot download {location} (expected SHA-256 {prefix}...): {reason}; "
                                   f"nothing was written to {dest_dir}") from None
            return dst, True
        tmp = dest_dir / f"{name}.{uuid.uuid4().hex}.partial"
        try:
            _copy_to(tmp, location)
            digest = sha256(tmp)
            if not digest.startswith(prefix):
                raise WeightsError(f"{location} is not the expected file: its SHA-256 is {digest[:12]}..., "
                                   f"expected {prefix}...; nothing was written to {dest_dir}")
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
    return dst, True


def fetch(backbone: str, source: str | None = None, progress: bool = True) -> tuple[Path, bool]:
    """The backbone's ImageNet file into torch hub's cache, from torchvision (default) or ``source``."""
    name = file_name(backbone)
    return fetch_file(source or BACKBONES[backbone][1], name, imagenet_weights_path(backbone).parent, progress)


def fetch_on_worker_start() -> None:
    """A Ray ``worker_process_setup_hook`` (kuberay/rayjob.yaml, where the code only exists in the job's
    runtime environment): fetch what is missing, from ``$EGOSEARCH_WEIGHTS_FROM`` when set. A failure is
    printed, not raised: the search's check then names the node and the command."""
    for backbone in BACKBONES:
        if not imagenet_weights_path(backbone).is_file():
            try:
                fetch(backbone, os.environ.get(FROM_ENV) or None, progress=False)
            except WeightsError as e:
                print(f"egomodel.weights: {e}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m egomodel.weights", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for command, help_ in (("fetch", "put the ImageNet weights into torch hub's cache (once per machine)"),
                           ("check", "exit 1 unless the weights are present and intact")):
        s = sub.add_parser(command, help=help_)
        s.add_argument("--backbone", choices=[*BACKBONES, "all"], default="all", help="default: all")
        if command == "fetch":
            s.add_argument("--from", dest="source", default=None, metavar="URL|PATH|s3://...",
                           help="a mirror instead of torchvision's URL: a folder, file, http(s) or s3 location; "
                                "one ending in .pth is the file itself, any other a folder holding it")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    backbones = list(BACKBONES) if args.backbone == "all" else [args.backbone]
    if args.command == "check":
        problems = {b: check_weights(b) for b in backbones}
        for b, problem in problems.items():
            if problem:
                print(problem, file=sys.stderr)
            else:
                print(f"{b}: {imagenet_weights_path(b)} present and intact")
        return 1 if any(problems.values()) else 0
    if args.source and len(backbones) > 1 and _is_file_location(args.source):
        print(f"error: --from {args.source} names one file; give the folder (or base URL) that holds "
              f"{' and '.join(map(file_name, backbones))}, or one --backbone", file=sys.stderr)
        return 2
    for b in backbones:
        try:
            path, written = fetch(b, args.source)
        except WeightsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{b}: {'fetched' if written else 'already present and intact:'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
