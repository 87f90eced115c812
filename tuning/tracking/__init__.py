"""MLflow, written only by the driver: the Ray Tune callback that mirrors trials into runs (``callback``),
the search's parent run and its end (``mlflow_runs``), which failed writes are retried (``write_retry``),
what the driver reads from Ray's trial files (``trial_files``), the tags runs are found by (``tags``),
Optuna's plots and the trials table (``study_plots``) and the champion model (``champion``).

``tuning.tracking.MlflowCallback`` and ``tuning.tracking.Op`` are the names under which searches saved
before the module move pickled the callback and its queued writes: they are looked up here, lazily (the
callback imports Ray and MLflow), and are the very classes of ``tuning.tracking.callback``.
"""

from typing import Any

_SAVED_NAMES = ("MlflowCallback", "Op")


def __getattr__(name: str) -> Any:
    if name in _SAVED_NAMES:
        from tuning.tracking import callback

        return getattr(callback, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
