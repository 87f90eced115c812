"""Packed per-clip frame cache (``data.packed_cache``): the decoded frames a clip is read with, as one
uint8 array on disk, written on first read and memory-mapped afterwards.

Decoding PNGs is the loader's bottleneck once a GPU trains (docs/design.md §7; docs/benchmarks.md): a clip's
sampled frames are the same every epoch (only the crop and flip change), so they are decoded once,
for every epoch, loader process and trial on the node. An entry's name hashes the source files' paths,
sizes and modification times, so a changed file is decoded afresh; entries are written to a temporary
file and renamed into place, so concurrent readers never see half an entry, and an entry that cannot be
read is rewritten.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def cache_base() -> Path:
    """``$EGOMODEL_CACHE``, else ``~/.cache/egomodel``: where egomodel keeps what it builds."""
    env = os.environ.get("EGOMODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "egomodel"


def resolve(setting: str) -> Path | None:
    """``data.packed_cache``: "" (off), "auto" (``cache_base()/packed``) or a folder."""
    if not setting:
        return None
    return cache_base() / "packed" if setting == "auto" else Path(setting).expanduser()


class PackedFrames:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def entry(self, paths: Sequence[Path], kind: str) -> Path:
        h = hashlib.sha256(kind.encode())
        for p in paths:
            st = p.stat()
            h.update(f"\n{os.path.abspath(p)}\t{st.st_size}\t{st.st_mtime_ns}".encode())
        digest = h.hexdigest()[:32]
        return self.folder / digest[:2] / f"{digest}.npy"

    def get(self, paths: Sequence[Path], kind: str, decode: Callable[[Path], np.ndarray]) -> np.ndarray:
        """(len(paths), ...) uint8: the decoded images, from the cache or decoded and stored."""
        path = self.entry(paths, kind)
        try:
            arr = np.load(path, mmap_mode="r")
            if arr.shape[0] == len(paths) and arr.dtype == np.uint8:
                return arr
        except (OSError, ValueError):  # absent, or cut short / corrupted: decode again
            pass
        arr = np.stack([decode(p) for p in paths])
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, path)
        except OSError:  # a full or read-only disk costs speed, never the run
            Path(tmp).unlink(missing_ok=True)
        return arr
