"""Content-addressed store of stage results under the Ray storage path, with expiring leases.

Layout under ``<storage>/stage_store/<key>/``: ``result.pt`` (the stage's shared weights, its
history rows, its best epoch, who computed it), ``result.sha256`` (written last: a result without it
is unfinished; a result whose hash differs is corrupt and recomputed) and ``lease.json`` (owner and
expiry, renewed by a heartbeat while the holder computes; a crashed holder's lease expires).

Works on a local path or any URI pyarrow understands (s3://, gs://, a shared mount). Object stores
have no atomic create-if-absent, so a lease is taken by writing it and reading it back after a short
settle time: of two writers racing, the one whose owner id is read back holds it.
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


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the root inside it, for a local path or a URI (s3://, gs://, file://)."""
    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), str(Path(uri).resolve()))


class StageStore:
    def __init__(self, uri: str, lease_seconds: float = 300.0, poll_seconds: float = 2.0,
                 settle_seconds: float = 0.5, log: Any = print) -> None:
        self.fs, self.root = filesystem(uri)
        self.uri = uri
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.settle_seconds = settle_seconds
        self.log = log
        self.token = uuid.uuid4().hex[:8]
        self._beats: dict[str, threading.Event] = {}
        self._cache = Path(tempfile.mkdtemp(prefix="stage-store-"))
        weakref.finalize(self, shutil.rmtree, self._cache, True)  # the local copies go with the store object

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

    def _delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass

    # ----------------------------------------------------------------- result
    def _result(self, key: str) -> Path | None:
        digest = self._read(self._path(key, "result.sha256"))
        if digest is None:
            return None
        data = self._read(self._path(key, "result.pt"))
        if data is None or hashlib.sha256(data).hexdigest() != digest.decode().strip():
            self.log(f"stage store: result {key[:12]} is corrupt; recomputing it")
            self._delete(self._path(key, "result.sha256"))
            self._delete(self._path(key, "result.pt"))
            return None
        local = self._cache / f"{key}.pt"
        local.write_bytes(data)
        return local

    def put(self, key: str, payload: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(payload, buf)
        data = buf.getvalue()
        self._write(self._path(key, "result.pt"), data)
        self._write(self._path(key, "result.sha256"), hashlib.sha256(data).hexdigest().encode())
        self.release(key)

    # ------------------------------------------------------------------ lease
    def _lease(self, key: str) -> dict[str, Any] | None:
        raw = self._read(self._path(key, "lease.json"))
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _write_lease(self, key: str, owner: str) -> None:
        lease = {"owner": owner, "token": self.token, "expires": time.time() + self.lease_seconds}
        self._write(self._path(key, "lease.json"), json.dumps(lease).encode())

    def _heartbeat(self, key: str, owner: str, stop: threading.Event) -> None:
        while not stop.wait(self.lease_seconds / 3):
            self._write_lease(key, owner)

    def get_or_claim(self, key: str, owner: str) -> Path | None:
        said = False
        while True:
            found = self._result(key)
            if found is not None:
                return found
            lease = self._lease(key)
            # a trial runs one attempt at a time: its own lease from another process is a dead attempt's
            dead_attempt = (lease is not None and lease.get("token") != self.token
                            and str(lease.get("owner", "")).rsplit(":", 1)[0] == owner)
            if lease is None or lease["expires"] < time.time() or dead_attempt:
                if lease is not None:
                    why = "is this trial's failed attempt" if dead_attempt else "expired"
                    self.log(f"stage store: lease on {key[:12]} held by {lease['owner']} {why}; taking over")
                owner_id = f"{owner}:{self.token}"
                self._write_lease(key, owner_id)
                time.sleep(self.settle_seconds)
                mine = self._lease(key)
                if mine is not None and mine.get("owner") == owner_id:
                    stop = threading.Event()
                    self._beats[key] = stop
                    threading.Thread(target=self._heartbeat, args=(key, owner_id, stop), daemon=True).start()
                    return None
                continue
            if not said:
                self.log(f"stage store: waiting for {lease['owner']}, which is computing stage prefix {key[:12]}")
                said = True
            time.sleep(self.poll_seconds)

    def release(self, key: str) -> None:
        stop = self._beats.pop(key, None)
        if stop is not None:
            stop.set()
            lease = self._lease(key)
            if lease is not None and lease.get("token") == self.token:
                self._delete(self._path(key, "lease.json"))
