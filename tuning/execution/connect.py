"""Connecting a driver (the search, retrain's seeds) to Ray: a local Ray started here, or a cluster's."""

from __future__ import annotations

import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class ConnectError(RuntimeError):
    """The Ray cluster named by ``--address`` cannot be reached."""


def _check_port(address: str) -> None:
    """Ray retries an unreachable GCS for minutes; a refused TCP connection is a clear error now."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConnectError(f"cannot connect to the Ray cluster at {address}: {e}") from None


WORKER_NICENESS = "RAY_worker_niceness"  # Ray's setting (default 15) for the nice value of worker processes


def connect_ray(address: str | None) -> None:
    import ray

    if address not in (None, "auto", "local"):
        _check_port(address)
    # Ray starts its workers (our trials) at nice 15, below the driver and Ray's own daemons: on a small
    # machine a trial then stalls whenever the driver works. Trials are the work here: normal priority.
    # (The cluster files start their nodes the same way.)
    os.environ.setdefault(WORKER_NICENESS, "0")
    try:
        if address is None:
            ray.init(address="local", runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [
                str(REPO), os.environ.get("PYTHONPATH", "")]))}}, log_to_driver=True)
        else:
            ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConnectError(f"cannot connect to the Ray cluster at {address}: {e}") from None
