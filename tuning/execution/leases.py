"""Leases on stage-store keys: which trial computes a stage prefix while the others wait for it.

A lease must be exclusive by construction, not by reading a file back (two writers on a shared file
system or an object store can both read their own write). Two holders of the same small interface
(``claim``, ``renew``, ``release``):

- :class:`LeaseTable` in a Ray actor that the search's driver starts on its own node with no CPU
  (:func:`start_lease_actor`). One process answers every claim in turn, so exactly one claimant holds a
  key. A lease lasts ``ttl`` seconds on the actor's clock and the holder's heartbeat renews it; a holder
  that dies stops renewing and its lease goes to the next claimant once it expired. A claim by the same
  owner (trial) from another process takes the lease over at once: a trial runs one attempt at a time,
  so that lease is a dead attempt's. Trials reach the actor by name and namespace
  (:class:`ActorLeases`, picklable). The actor dies with the driver, and so do the trials it served.
- :class:`FileLocks` on one machine without Ray (tests, the search-quality replay): an ``flock`` per
  key, which the kernel releases when its holder dies.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

NAMESPACE = "egosearch"

# claim's answer: (granted, holder, note). holder is who holds the key now (the previous holder when
# the lease was taken over); note says why it was taken over ("expired", "is this trial's failed
# attempt") or is empty.
Claim = tuple[bool, str, str]


class LeaseTable:
    """The leases themselves: key -> (owner, token, expiry on this process's monotonic clock)."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, str, float]] = {}
        self._lock = threading.Lock()

    def claim(self, key: str, owner: str, token: str, ttl: float) -> Claim:
        with self._lock:
            now = time.monotonic()
            held = self._held.get(key)
            note = ""
            if held is not None and held[1] != token:
                if held[0] == owner:
                    note = "is this trial's failed attempt"
                elif held[2] < now:
                    note = "expired"
                else:
                    return False, held[0], ""
            self._held[key] = (owner, token, now + ttl)
            return True, held[0] if note else owner, note

    def renew(self, key: str, token: str, ttl: float) -> bool:
        """False when the lease is no longer this token's (it expired and another claimant took it)."""
        with self._lock:
            held = self._held.get(key)
            if held is None or held[1] != token:
                return False
            self._held[key] = (held[0], token, time.monotonic() + ttl)
            return True

    def release(self, key: str, token: str) -> None:
        with self._lock:
            if key in self._held and self._held[key][1] == token:
                del self._held[key]


class LeaseServiceGone(RuntimeError):
    pass


class ActorLeases:
    """A trial's handle on the driver's lease actor, found by name and namespace (picklable)."""

    def __init__(self, name: str, namespace: str = NAMESPACE, timeout_s: float = 60.0) -> None:
        self.name, self.namespace, self.timeout_s = name, namespace, timeout_s
        self._actor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_actor": None}

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        if self._actor is None:
            try:
                self._actor = ray.get_actor(self.name, namespace=self.namespace)
            except ValueError:
                raise LeaseServiceGone(
                    f"the search's stage-store lease actor {self.namespace}/{self.name} is gone (its driver "
                    "stopped); rerun the search with --resume") from None
        return ray.get(getattr(self._actor, method).remote(*args), timeout=self.timeout_s)

    def claim(self, key: str, owner: str, token: str, ttl: float) -> Claim:
        return tuple(self._call("claim", key, owner, token, ttl))  # type: ignore[return-value]

    def renew(self, key: str, token: str, ttl: float) -> bool:
        return bool(self._call("renew", key, token, ttl))

    def release(self, key: str, token: str) -> None:
        self._call("release", key, token)


def start_lease_actor(name: str | None = None, namespace: str = NAMESPACE) -> tuple[ActorLeases, Any]:
    """The lease actor on the calling driver's node (no CPU, so it never waits for a worker), owned by
    the driver. Returns the trials' handle and the actor; the driver keeps the actor referenced for as
    long as the search runs."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = name or f"stage-leases-{uuid.uuid4().hex[:12]}"
    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(LeaseTable).options(
        name=name, namespace=namespace, num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
    ).remote()
    ray.get(actor.renew.remote("", "", 0.0))  # up and answering before any trial asks it
    return ActorLeases(name, namespace), actor


class FileLocks:
    """Leases for processes of one machine: an exclusive ``flock`` on ``<root>/<key>/lease.lock`` (the
    holder's name written inside for the waiting claimants' messages). The kernel drops the lock when its
    holder dies, so there is nothing to expire; ``ttl`` is ignored."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self._fds: dict[tuple[str, str], int] = {}

    def claim(self, key: str, owner: str, token: str, ttl: float) -> Claim:
        if (key, token) in self._fds:
            return True, owner, ""
        path = self.root / key / "lease.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            return False, holder or "another process", ""
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.encode(), 0)
        self._fds[(key, token)] = fd
        return True, owner, ""

    def renew(self, key: str, token: str, ttl: float) -> bool:
        return (key, token) in self._fds

    def release(self, key: str, token: str) -> None:
        fd = self._fds.pop((key, token), None)
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor drops the lock
