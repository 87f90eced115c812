"""End a process session: what a benchmark or a test started, and nothing else on the machine."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def kill_session(sid: int, timeout: float = 30) -> None:
    """SIGKILL every process of session ``sid``: a search driver started with ``start_new_session=True``
    and the local Ray it started. Ray's workers leave the driver's process group but keep its session,
    so this ends that Ray and no other (never ``ray stop``, which ends every Ray on the machine). The
    daemons of ``ray start`` keep the session of the ``ray start`` command, so the same holds for them."""

    def members() -> list[int]:
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
        return pids

    deadline = time.time() + timeout
    while (pids := members()) and time.time() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    assert not members(), f"processes of session {sid} survived SIGKILL: {members()}"
