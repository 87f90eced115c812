"""How :class:`tuning.tracking.callback.MlflowCallback` treats an MLflow write that failed: one the store
rejected for what it is, or one that failed in our own code, is dropped (:func:`is_permanent`); one that
failed because the store is away stays queued and is retried, at the end of the experiment for up to
``EGOSEARCH_MLFLOW_FLUSH_TIMEOUT`` seconds (:func:`flush_timeout`).
"""

from __future__ import annotations

import os
import time

from mlflow.exceptions import MlflowException

FLUSH_TIMEOUT_ENV = "EGOSEARCH_MLFLOW_FLUSH_TIMEOUT"
# errors that say the write itself is wrong: retrying cannot help
PERMANENT_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                   "INVALID_STATE", "BAD_REQUEST", "MALFORMED_REQUEST"}


class Dropped(Exception):
    """A queued write that can never succeed."""


def is_permanent(e: Exception) -> bool:
    """Whether retrying ``e`` cannot help: MLflow rejected the write itself, or our own code failed.
    The store being away (MLflow's connection errors, sockets, HTTP and database drivers) is not."""
    if isinstance(e, Dropped):
        return True
    if isinstance(e, MlflowException):
        return e.error_code in PERMANENT_CODES
    if isinstance(e, OSError):  # ConnectionError, TimeoutError, a full disk on the store's side
        return False
    return type(e).__module__.split(".")[0] not in _TRANSPORT_MODULES


_TRANSPORT_MODULES = {"requests", "urllib3", "http", "sqlalchemy", "sqlite3", "botocore", "boto3", "google", "azure"}


def one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def now_ms() -> int:
    return int(time.time() * 1000)


def flush_timeout() -> float:
    try:
        return max(0.0, float(os.environ.get(FLUSH_TIMEOUT_ENV, "120")))
    except ValueError:
        return 120.0
