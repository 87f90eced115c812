"""Whether every node sees the search's storage, checked as a fact rather than guessed from the path.

Before any trial, the driver writes a marker file into the storage location and a Ray task pinned to
each node alive now reads it back; a node that cannot is named in the error, with the path. Nodes an
autoscaler launches later are checked by each trial before it trains (:func:`read_marker` in the
trainable): such a trial fails at once with the same message, not after an hour of training. A URI
(s3://, gs://) and a shared mount pass; a folder that exists on the head only does not.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from tuning.execution.nodes import on_every_node, this_node
from tuning.execution.stage_store import filesystem

MARKER_DIR = ".egosearch-storage-check"


class StorageError(RuntimeError):
    pass


def write_marker(storage: str) -> str:
    """A fresh marker in ``storage``; its name (relative to the storage root)."""
    fs, root = filesystem(storage)
    name = f"{MARKER_DIR}/{uuid.uuid4().hex}.json"
    try:
        fs.create_dir(f"{root}/{MARKER_DIR}", recursive=True)
        with fs.open_output_stream(f"{root}/{name}") as f:
            f.write(json.dumps({"written_by": socket.gethostname(), "at": time.time()}).encode())
    except OSError as e:
        raise StorageError(f"cannot write into the storage {storage}: {e}") from None
    return name


def read_marker(storage: str, name: str) -> None:
    """Raise :class:`StorageError` naming this node when it cannot read the marker the driver wrote."""
    try:
        fs, root = filesystem(storage)
        with fs.open_input_stream(f"{root}/{name}") as f:
            json.loads(f.read())
    except (OSError, ValueError) as e:
        raise StorageError(
            f"node {socket.gethostname()} ({this_node()}) cannot read the search's storage {storage} ({name}: {e}). "
            "Every node must see it: pass --storage s3://BUCKET/ray_results, gs://..., or a folder on a "
            "mount present on every node") from None


def check_every_node(storage: str, name: str, timeout_s: float = 120.0) -> int:
    """Read the marker from every alive node, each in a zero-CPU task pinned to it; the number of nodes
    checked. Raises :class:`StorageError` listing every node that cannot read it."""
    count, problems = on_every_node(_read_on_node, storage, name, timeout_s=timeout_s)
    if problems:  # read_marker's own message names its node already
        raise StorageError("; ".join(p.problem if p.ran else str(p) for p in problems))
    return count


def _read_on_node(storage: str, name: str) -> str | None:
    try:
        read_marker(storage, name)
    except StorageError as e:
        return str(e)
    return None


def describe(nodes: int, storage: str) -> str:
    return f"storage {storage}: readable from all {nodes} node{'s' if nodes != 1 else ''} alive now"


# filesystems that live on one machine's disk or memory: a folder on them is never a shared storage
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "overlay", "tmpfs", "ramfs",
                               "vfat", "exfat", "ntfs", "ntfs3"})


def filesystem_type(path: str, mounts: str = "/proc/mounts") -> str | None:
    """The type of the filesystem ``path`` lives on (the longest mount point above it), or None."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def refuse_local_storage_when_nodes_come_later(storage: str, later: str | None,
                                               mounts: str = "/proc/mounts") -> None:
    """A folder on this node's own disk, on a cluster that launches nodes after the check (``later``: why,
    from :func:`tuning.execution.feasibility.adds_nodes_later`): no node launched later could read it, so
    the search is refused now rather than each later trial failing."""
    if later is None or ("://" in storage and not storage.startswith("file://")):
        return
    path = storage.removeprefix("file://")
    kind = filesystem_type(path, mounts)
    if kind in LOCAL_FILESYSTEMS:
        raise StorageError(
            f"--storage {storage} is a folder on this node's own disk ({kind}), but nodes will join this cluster "
            f"later ({later}) and cannot read it: give a URI (s3://BUCKET/egosearch, gs://...) or a shared mount "
            "(NFS) that every node has")


def check(storage: str, remote: bool) -> tuple[str, Any]:
    """Write a marker and, with ``remote`` (a cluster given by --address), read it on every node; the
    marker's name for the trials, and what was checked. On a cluster that launches nodes later, a folder
    on this node's own disk is refused first."""
    if remote:
        from tuning.execution.feasibility import adds_nodes_later

        refuse_local_storage_when_nodes_come_later(storage, adds_nodes_later())
    name = write_marker(storage)
    if not remote:
        return name, f"storage {storage}: this machine's local Ray"
    return name, describe(check_every_node(storage, name), storage)
