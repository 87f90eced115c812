"""The multi-objective search (accuracy up, GFLOPs down): the space's objectives and their bad input, the
champion rule on a hand-made front, and a tiny ``wearable`` search on local Ray that ends with the
Pareto front in MLflow."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import client_of, env, load_study, search_cmd
from tuning.execution.study import RAY_TRIAL_ATTR, STOPPED_ATTR
from tuning.space import SPACES_DIR, SpaceError, load_space
from tuning.tracking.pareto import CHOICE_TAG, PARETO_TAG, RULE_TAG, Row, choose

OBJECTIVES = [{"name": "val_top1", "direction": "max"}, {"name": "gflops", "direction": "min"}]


def wearable(tmp: Path, **changes: object) -> Path:
    spec = yaml.safe_load((SPACES_DIR / "wearable.yaml").read_text())
    spec.update(changes)
    spec = {k: v for k, v in spec.items() if v is not None}
    path = tmp / "w.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(("changes", "message"), [
    ({"scheduler": {"type": "asha"}}, "asha compares trials on one number and cannot stop trials on the 2 objectives"),
    ({"objectives": [OBJECTIVES[0], {"name": "glops", "direction": "min"}]},
     r"objectives\[1\].name: no trial reports 'glops'.*did you mean 'gflops'"),
    ({"objectives": None}, "moasha needs two or more objectives"),
    ({"metric": "val_top1"}, "give objectives or metric/mode, not both"),
    ({"objectives": [OBJECTIVES[0], {"name": "gflops", "direction": "down"}]}, r"objectives\[1\].direction"),
    ({"export": "tflite"}, "export: expected one of onnx"),
    ({"champion": {"max_glops": 3}}, "champion.max_glops: unknown key"),
])
def test_bad_objectives_fail_at_load(tmp_path, changes, message):
    with pytest.raises(SpaceError, match=message):
        load_space(wearable(tmp_path, **changes))


def test_wearable_space():
    space = load_space("wearable")
    assert space.objectives == (("val_top1", "max"), ("gflops", "min"))
    assert (space.metric, space.mode, space.scheduler.type, space.export) == ("val_top1", "max", "moasha", "onnx")
    variants = next(p for p in space.params if p.key == "model.variant").choices
    assert set(variants) == {"attention", "ms", "feedback", "two_stream"}
    for other in ("smoke", "ablation", "paper", "table3"):
        assert load_space(other).export == ""  # opt-in: no export at registration elsewhere


@pytest.mark.parametrize(("flags", "message"), [
    (["--space", "wearable", "--warm-start", "ablation"], "cannot fill a multi-objective one"),
    (["--space", "smoke", "--max-gflops", "3"], "--max-gflops: the space smoke has no objectives"),
    (["--space", "wearable", "--min-top1", "1.5"], "--min-top1 in"),
])
def test_bad_flags_fail_before_anything_starts(tmp_path, monkeypatch, capsys, flags, message):
    from tuning.search import main

    monkeypatch.chdir(tmp_path)
    assert main(flags) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no Ray folder, no MLflow or Optuna store


def test_the_plots_paper_points_are_what_the_cost_model_counts():
    from egomodel.config import from_dict
    from egomodel.cost import count
    from tuning.tracking.pareto import PAPER_POINTS

    (_, two_stream, _), (_, feedback, _) = PAPER_POINTS
    assert count(from_dict({}, {"model.variant": "two_stream"})).gflops == pytest.approx(two_stream, abs=0.01)
    assert count(from_dict({}, {"model.variant": "feedback"})).gflops == pytest.approx(feedback, abs=0.01)


def test_an_export_at_registration_that_fails_is_a_warning_on_the_run(tmp_path, monkeypatch, capsys):
    """``export: onnx`` on a champion that cannot be exported leaves the search finished, says why on its run."""
    import mlflow

    from tuning.export import export_at_registration

    monkeypatch.chdir(tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("e")).info.run_id  # a run without a checkpoint
    export_at_registration(client, run_id, None)
    assert client.get_run(run_id).data.tags["egosearch.export"].startswith(f"refused: run {run_id} has no checkpoint")
    assert "the champion was not exported" in capsys.readouterr().err


FRONT = [Row("cheap", {"val_top1": 0.40, "gflops": 1.0}, True, {}),
         Row("mid", {"val_top1": 0.60, "gflops": 5.0}, True, {}),
         Row("mid2", {"val_top1": 0.70, "gflops": 9.0}, True, {}),
         Row("big", {"val_top1": 0.80, "gflops": 20.0}, True, {})]


@pytest.mark.parametrize(("max_gflops", "min_top1", "expected"), [
    (None, None, "big"),  # neither: the most accurate
    (9.0, None, "mid2"),  # the most accurate within the budget (at the budget counts)
    (None, 0.55, "mid"),  # the cheapest above the floor
    (10.0, 0.55, "mid2"),  # both: the most accurate within the budget among those above the floor
    (4.0, 0.55, None),  # nothing meets both
])
def test_champion_rule(max_gflops, min_top1, expected):
    chosen, why = choose(FRONT, max_gflops, min_top1)
    assert (chosen.trial_id if chosen else None) == expected
    assert (expected or "no trial") in why


def tiny_wearable(tmp: Path) -> Path:
    """wearable.yaml at the smallest size that trains: 32 px, 2-3 frames, 2/1/1 epochs (one rung, epoch 2),
    three fixed points, no export."""
    spec = yaml.safe_load((SPACES_DIR / "wearable.yaml").read_text())
    smoke = yaml.safe_load((SPACES_DIR / "smoke.yaml").read_text())
    spec.pop("export"), spec.pop("champion")
    spec["base"] = {**{k: v for k, v in smoke["base"].items() if k not in ("model.variant", "data.frames",
                                                                              "data.image_size")},
                    "train.epochs_scale": 0.005, "train.eval_batch_size": 32, "model.hidden": 16}
    spec.update(name="test_space", num_samples=3, max_concurrent=2, resources={"cpu": 1, "gpu": 0}, plots=False)
    spec["params"]["model.variant"]["choices"] = ["attention", "ms", "feedback"]
    spec["params"]["data.frames"]["choices"] = [2, 3]
    spec["params"]["model.backbone"]["choices"] = ["resnet18"]
    spec["params"]["data.image_size"]["choices"] = [32]
    fb = {"model.ms_task": "classification", "model.alpha": 1.0, "model.tau": 0.2, "train.stage2.lr": 1e-4,
          "train.stage3.lr": 1e-4, "model.insertion": "conv1", "train.stage3.trainable": ["conv1", "layer4"]}
    spec["points"] = [
        {"model.variant": "attention", "model.backbone": "resnet18", "data.frames": 2, "data.image_size": 32,
         "train.stage2.lr": 1e-4},
        {"model.variant": "feedback", "model.backbone": "resnet18", "data.frames": 3, "data.image_size": 32, **fb},
        {"model.variant": "ms", "model.backbone": "resnet18", "data.frames": 2, "data.image_size": 32,
         "model.ms_task": "regression_l1",
         "model.alpha": 1.0, "train.stage2.lr": 1e-4},
    ]
    path = tmp / "test_space.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_tiny_wearable_search_ends_with_the_front_in_mlflow(tmp_path, tiny_root):
    from egomodel.cost import clip_cost
    from tuning.space.sampling import encode_point, trial_config

    space_file = tiny_wearable(tmp_path)
    space = load_space(space_file)
    points = [encode_point(space, p) for p in space.points]
    cache = tmp_path / "cache"
    # the four configurations' costs, counted once here; the trials find them in the same cache
    costs = sorted(clip_cost(trial_config(space, p), cache=cache / "cost.json").gflops for p in points)
    budget = costs[1]  # the second cheapest: the rule has a choice to make
    assert costs[0] < costs[1] < costs[2]
    e = {**env(), "EGOMODEL_CACHE": str(cache)}
    # champion-only: no trial run keeps weights but the champion's, logged when the search ends
    proc = subprocess.run(search_cmd(space_file, tiny_root, "--max-gflops", repr(budget), "--log-checkpoints",
                                     "champion-only"), cwd=tmp_path, env=e, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(next(line for line in proc.stdout.splitlines() if line.startswith("Pareto front:")))

    client = client_of(tmp_path)
    exp = client.get_experiment_by_name("test_space")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert artifacts == {"pareto/front.png", "pareto/trials.csv"}
    # Optuna's plots of a two-objective study show its first objective (no "no history plot" note)
    assert "search/optuna_history.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    with open(client.download_artifacts(parent.info.run_id, "pareto/trials.csv", str(tmp_path))) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and sorted(float(r["gflops"]) for r in rows) == pytest.approx(costs)
    front = [r for r in rows if r["pareto"] == "True"]
    assert front and all(r["finished"] == "True" for r in front)
    tagged = {r.data.tags["ray.trial_id"] for r in children if r.data.tags.get(PARETO_TAG) == "true"}
    assert tagged == {r["trial_id"] for r in front}
    # the champion: the most accurate front member within the budget, recorded on the parent run
    champion_trial = parent.data.tags["best_trial_id"]
    within = [r for r in front if float(r["gflops"]) <= budget]
    best = max(within, key=lambda r: (float(r["val_top1"]), -float(r["gflops"])))
    assert champion_trial == best["trial_id"] and float(best["gflops"]) <= budget
    assert parent.data.tags[RULE_TAG] == f"max_gflops={budget:g}"
    assert champion_trial in parent.data.tags[CHOICE_TAG]
    with_weights = {r.data.tags["ray.trial_id"] for r in children
                    if any(a.path == "checkpoint" for a in client.list_artifacts(r.info.run_id))}
    assert with_weights == {champion_trial}
    # Optuna: one study with two directions; a trial MOASHA stopped is told COMPLETE with the values it was
    # stopped on and the epoch it stopped at (TPE ranks it by non-domination), never as a finished trial
    study = load_study(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    print("Optuna:", [(t.state.name, t.values, t.user_attrs.get(STOPPED_ATTR)) for t in study.trials])
    assert all(t.state.name == "COMPLETE" and len(t.values) == 2 for t in study.trials)
    finished = {t.user_attrs[RAY_TRIAL_ATTR]: STOPPED_ATTR not in t.user_attrs for t in study.trials}
    assert finished == {r["trial_id"]: r["finished"] == "True" for r in rows}
