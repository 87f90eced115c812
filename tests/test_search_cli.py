"""The search command's conventions, without Ray running: ``--set`` overrides, ``--dry-run``, where results
go (``--workdir``), a re-run that says what to type next, the parent run that says how to find the best
model, the study's objective names for optuna-dashboard, and the champion logged as models-from-code."""

from __future__ import annotations

import pytest

from tuning.space import load_space


@pytest.mark.parametrize("space_name, names", [("smoke", ["val_top1"]), ("wearable", ["val_top1", "gflops"])])
def test_the_study_names_its_objectives_for_the_dashboard(space_name, names, tmp_path):
    import optuna

    from tuning.execution.searcher import make_searcher, study_of
    from tuning.execution.study import open_storage

    space = load_space(space_name)
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = make_searcher(space, 1, 0, storage, "s")
    expected = [n for n, _ in space.objectives] or [space.metric]
    assert expected == names[: len(expected)]
    assert study_of(searcher).metric_names == expected
    assert optuna.load_study(study_name="s", storage=storage).metric_names == expected  # what the dashboard reads
