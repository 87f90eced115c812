"""What the driver reads from the files Ray keeps for a trial: why a failed trial failed (its
``error.txt``, :func:`error_reason`) and the training curves of a trial stopped early (its
``result.json``, :func:`curves_png`). Both are read as text, never unpickled.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

_MAX_TAG = 4900


def error_text(trial: Any) -> str:
    """Everything Ray wrote about the trial's failures (``error.txt``, one block per failure)."""
    path = getattr(trial, "error_file", None)
    try:
        return Path(path).read_text() if path else ""
    except OSError:
        return ""


def error_reason(trial: Any, text: str | None = None) -> str:
    """One line saying why the trial failed: the trainable's own exception inside Ray's wrapper.

    In Ray 2.60 ``on_trial_error`` gets only the trial (no exception argument, no ``error_message``
    attribute). Before calling it Ray appends ``Failure # N (occurred at ...)`` and ``str(exc)`` to the
    trial's ``error.txt`` on the driver; for a ``RayTaskError`` that text ends with the original
    ``FloatingPointError: training loss is nan ...`` line, for a dead worker it starts with what
    happened (``The actor died unexpectedly ...``). The text is read, never an unpickled object.
    """
    text = error_text(trial) if text is None else text
    last = _ANSI.sub("", _FAILURE.split(text)[-1]).strip()
    line = _last_exception_line(last)
    if line:
        return line
    first = next((ln.strip() for ln in last.splitlines() if ln.strip()), "")
    return first[:_MAX_TAG] or "trial failed (Ray wrote no error text)"


_FAILURE = re.compile(r"^Failure # \d+ \(occurred at [^)]*\)\s*$", re.M)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Failure)(?:\([\w.]*\))?: [^\n]*)$", re.M)


def _last_exception_line(text: str) -> str | None:
    found = _EXC_LINE.findall(text)
    return found[-1].strip()[:_MAX_TAG] if found else None


def curves_png(trial: Any) -> bytes | None:
    """Training curves of a trial that did not finish, from Ray's ``result.json`` on the driver."""
    try:
        path = Path(trial.local_path) / "result.json"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if not r.get("final") and "global_epoch" in r]
        if not rows:
            return None
        from egomodel.reporting.pictures import training_curves

        with tempfile.TemporaryDirectory() as tmp:
            out = training_curves(rows, Path(tmp) / "curves.png",
                                  f"trial {trial.trial_id}: stopped early at epoch {rows[-1]['global_epoch']}")
            return out.read_bytes() if out else None
    except Exception:  # noqa: BLE001 - a missing picture is no reason to lose the run's record
        return None
