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
            f"node {socket.gethostname()} ({_where()}) cannot read the search's storage {storage} ({name}: {e}). "
            "Every node must see it: pass --storage s3://BUCKET/ray_results, gs://..., or a folder on a "
            "mount present on every node") from None


def _where() -> str:
    """This node's address and Ray node id (nodes of one machine share the address)."""
    try:
        import ray

        where = ray.util.get_node_ip_address()
        return f"{where}, Ray node {ray.get_runtime_context().get_node_id()}" if ray.is_initialized() else where
    except Exception:  # noqa: BLE001 - only for the message
        return "address unknown"


def check_every_node(storage: str, name: str, timeout_s: float = 120.0) -> int:
    """Read the marker from every alive node, each in a zero-CPU task pinned to it; the number of nodes
    checked. Raises :class:`StorageError` listing every node that cannot read it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    read = ray.remote(num_cpus=0, max_retries=0)(_read_on_node)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    # keyed by node id: several nodes may share one address (raylets of one machine)
    refs = {(n["NodeID"], n["NodeManagerAddress"]): read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(storage, name) for n in nodes}
    failures = []
    for (node_id, address), ref in refs.items():
        try:
            problem = ray.get(ref, timeout=timeout_s)
        except Exception as e:  # noqa: BLE001 - a node whose task could not run cannot be trusted either
            problem = f"node {address} (Ray node {node_id}): the check could not run there: {type(e).__name__}: {e}"
        if problem:
            failures.append(problem)
    if failures:
        raise StorageError("; ".join(failures))
    return len(nodes)


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
