"""What a trial's MLflow run keeps (``--log-checkpoints``), in a module of its own: the search's command
line, the trial callback and the end of a search read it, and a 64-trial ablation at about 150 MB per
ResNet-34 checkpoint is 10 GB if every trial keeps its weights.

- ``best`` (default): a trial that ran its whole schedule keeps its best checkpoint; one the scheduler
  stopped early keeps its curves only;
- ``all``: an early-stopped trial also keeps the best weights of its last Ray checkpoint (when it had one);
- ``champion-only``: no trial keeps weights while the search runs; at its end the champion's best
  checkpoint goes to its run (what ``tuning.export`` reads);
- ``none``: no ``checkpoint/`` in any run; the registered champion model still holds its weights.

Every finished trial keeps its metrics, confusion matrix and pictures whatever the policy.
"""

from __future__ import annotations

LOG_CHECKPOINTS = ("best", "all", "champion-only", "none")
POLICY_PARAM = "log_checkpoints"  # on the parent run: the policy the search started with
CHECKPOINT_DIR = "checkpoint"  # a trial run's *_best.pt files


def logs_weights(policy: str, finished: bool) -> bool:
    """Whether a trial's run gets its best weights while the search runs, under ``policy`` (``finished``:
    the trial ran its whole schedule; else the scheduler stopped it early)."""
    if policy not in LOG_CHECKPOINTS:
        raise ValueError(f"--log-checkpoints {policy!r}: expected one of {', '.join(LOG_CHECKPOINTS)}")
    return policy == "all" or (policy == "best" and finished)
