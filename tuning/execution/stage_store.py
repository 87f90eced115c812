"""Content-addressed store of stage results under the Ray storage path; leases say who computes.

Layout under ``<storage>/stage_store/<key>/``: ``result-<unique>.pt`` (the stage's shared weights, its
history rows, its best epoch, who computed it), written whole under a name no other writer uses, then
published by ``result.json`` (the payload's file name, size and SHA-256), written last: on a file
system under a temporary name and renamed over (atomic), on an object store as one object (an upload
appears whole or not at all). A reader reads the manifest, then the file it names, and checks it
against the hash in that same manifest, so it never sees a half-written result nor pairs one writer's
hash with another writer's payload. A result that fails the check is recomputed and republished.

Leases (:mod:`tuning.execution.leases`) are not files: in a search, the driver's lease actor; on one
machine without Ray, ``flock``. The holder renews its lease from a heartbeat thread that outlives
transient errors (storage or actor briefly unreachable).

Works on a local path or any URI pyarrow understands (s3://, gs://, a shared mount).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

import torch
from pyarrow import fs as pafs

from tuning.execution.leases import FileLocks

MANIFEST = "result.json"


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the root inside it, for a local path or a URI (s3://, gs://, file://)."""
    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), str(Path(uri).resolve()))


class StageStore:
    """``leases``: the search's :class:`~tuning.execution.leases.ActorLeases`; None on one machine
    (``flock`` leases, local paths only)."""

    def __init__(self, uri: str, lease_seconds: float = 300.0, poll_seconds: float = 2.0,
                 leases: Any = None, log: Any = print) -> None:
        self.fs, self.root = filesystem(uri)
        self.uri = uri
        if leases is None:
            if not isinstance(self.fs, pafs.LocalFileSystem):
                raise ValueError(f"a stage store at {uri} is shared by nodes: its leases need the search's "
                                 "lease actor (leases=ActorLeases(...))")
            leases = FileLocks(self.root)
        self.leases = leases
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.log = log
        self.token = uuid.uuid4().hex[:12]
        self._beats: dict[str, threading.Event] = {}
        self._cache: Path | None = None  # made on the first load: a process that only computes leaves no folder

    # ------------------------------------------------------------------ files
    def _path(self, key: str, name: str) -> str:
        return f"{self.root}/{key}/{name}"

    def _read(self, path: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except (FileNotFoundError, OSError):
            return None

    def _write(self, path: str, data: bytes) -> None:
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def _publish(self, path: str, data: bytes) -> None:
        """``data`` at ``path`` all at once: renamed into place on a file system, one object elsewhere."""
        if not isinstance(self.fs, pafs.LocalFileSystem):
            self._write(path, data)
            return
        tmp = f"{path}.{self.token}.tmp"
        self._write(tmp, data)
        self.fs.move(tmp, path)

    def _delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass

    # ----------------------------------------------------------------- result
    def _manifest(self, key: str) -> dict[str, Any] | None:
        raw = self._read(self._path(key, MANIFEST))
        try:
            manifest = json.loads(raw) if raw else None
        except ValueError:
            return None
        return manifest if isinstance(manifest, dict) and {"file", "sha256"} <= manifest.keys() else None

    def _payload(self, key: str, manifest: dict[str, Any]) -> bytes | None:
        """The published payload, or None when it is missing or fails the manifest's hash."""
        data = self._read(self._path(key, manifest["file"]))
        if data is None or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
            return None
        return data

    def _result(self, key: str) -> Path | None:
        manifest = self._manifest(key)
        if manifest is None:
            return None
        data = self._payload(key, manifest)
        if data is None:
            self.log(f"stage store: result {key[:12]} ({manifest['file']}) is missing or corrupt; recomputing it")
            return None
        if self._cache is None:
            self._cache = Path(tempfile.mkdtemp(prefix="stage-store-"))
            weakref.finalize(self, shutil.rmtree, self._cache, True)  # the local copies go with the store object
        local = self._cache / f"{key}.pt"
        local.write_bytes(data)
        return local

    def put(self, key: str, payload: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
        name = f"result-{uuid.uuid4().hex}.pt"
        try:
            old = self._manifest(key)
            if old is not None and self._payload(key, old) is not None:
                return  # another holder (whose lease this one outlived) published it first: theirs stands
            self._write(self._path(key, name), data)
            manifest = {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            self._publish(self._path(key, MANIFEST), json.dumps(manifest).encode())
            if old is not None:
                self._delete(self._path(key, old["file"]))  # the corrupt one it replaces
        finally:
            self.release(key)

    # ------------------------------------------------------------------ lease
    def _heartbeat(self, key: str, stop: threading.Event) -> None:
        lost = False
        while not stop.wait(self.lease_seconds / 3):
            try:
                held = self.leases.renew(key, self.token, self.lease_seconds)
            except Exception as e:  # noqa: BLE001 - a transient failure must not end the heartbeat
                self.log(f"stage store: could not renew the lease on {key[:12]} ({type(e).__name__}: {e}); "
                         "retrying")
                continue
            if not held and not lost:
                self.log(f"stage store: the lease on {key[:12]} expired and went to another trial; this one "
                         "finishes anyway (the first result published stands)")
            lost = not held

    def get_or_claim(self, key: str, owner: str) -> Path | None:
        said = False
        while True:
            found = self._result(key)
            if found is not None:
                return found
            granted, holder, note = self.leases.claim(key, owner, self.token, self.lease_seconds)
            if granted:
                if note:
                    self.log(f"stage store: lease on {key[:12]} held by {holder} {note}; taking over")
                if key not in self._beats:
                    stop = threading.Event()
                    self._beats[key] = stop
                    threading.Thread(target=self._heartbeat, args=(key, stop), daemon=True).start()
                found = self._result(key)  # published between the first look and the claim
                if found is not None:
                    self.release(key)
                return found
            if not said:
                self.log(f"stage store: waiting for {holder}, which is computing stage prefix {key[:12]}")
                said = True
            time.sleep(self.poll_seconds)

    def release(self, key: str) -> None:
        stop = self._beats.pop(key, None)
        if stop is not None:
            stop.set()
        try:
            self.leases.release(key, self.token)
        except Exception as e:  # noqa: BLE001 - an unreleased lease expires
            self.log(f"stage store: could not release the lease on {key[:12]} ({type(e).__name__}: {e})")
