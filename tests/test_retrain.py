"""Retrain runs the paper's full schedule unless told otherwise, whatever scale the search ran at."""

from __future__ import annotations

import pytest

from tuning.retrain import RetrainError, schedule


def test_the_full_schedule_by_default_and_the_flag_when_given():
    searched = {"train.epochs_scale": "0.01"}
    assert schedule(None, searched) == (1.0, "full schedule", "0.01")
    assert schedule(0.5, searched) == (0.5, "--epochs-scale", "0.01")
    assert schedule(None, {}) == (1.0, "full schedule", "1.0")
    with pytest.raises(RetrainError, match="--epochs-scale must be > 0"):
        schedule(0.0, searched)
