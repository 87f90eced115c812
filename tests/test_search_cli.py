"""The search command's conventions, without Ray running: ``--set`` overrides, ``--dry-run``, where results
go (``--workdir``), a re-run that says what to type next, the parent run that says how to find the best
model, the study's objective names for optuna-dashboard, and the champion logged as models-from-code."""

from __future__ import annotations

from pathlib import Path

import pytest

from egomodel.config import from_dict, parse_overrides
from tuning.space import list_spaces, load_space
from tuning.space.errors import SpaceError
from tuning.space.rungs import resolve_rungs

REPO = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------------------------------------- --set
def test_set_changes_the_spaces_base_and_its_own_settings():
    plain = load_space("ablation")
    space = load_space("ablation", parse_overrides(["train.epochs_scale=0.1", "resources.gpu=0.25",
                                                    "num_samples=8", "scheduler.reduction_factor=3"]))
    assert plain.base["train.epochs_scale"] == 1.0 and plain.resources["gpu"] == 0.5
    assert space.base["train.epochs_scale"] == 0.1 and space.base["model.variant"] == "feedback"
    assert space.resources == {"cpu": 4.0, "gpu": 0.25} and space.num_samples == 8
    assert space.scheduler.reduction_factor == 3 and space.params == plain.params
    # the changed space is validated as a whole: its auto rungs follow the shorter schedule
    cfg = from_dict({}, space.base)
    assert resolve_rungs(space, cfg) != resolve_rungs(plain, from_dict({}, plain.base))


def test_set_scheduler_type_drops_the_spaces_fields_the_new_scheduler_does_not_take():
    """ASHA's rungs and reduction factor go with --set scheduler.type=fifo (the advice a too-short schedule's
    error gives); a field given by --set itself is still checked against the new type."""
    assert load_space("ablation", parse_overrides(["scheduler.type=fifo"])).scheduler.type == "fifo"
    plain = load_space("ablation").scheduler
    space = load_space("ablation", parse_overrides(["scheduler.type=asha_promotion", "scheduler.reduction_factor=3"]))
    assert (space.scheduler.type, space.scheduler.reduction_factor) == ("asha_promotion", 3)
    assert space.scheduler.rungs == plain.rungs  # a field both types take is kept
    with pytest.raises(SpaceError, match=r"scheduler\.rungs: unknown field for the fifo scheduler"):
        load_space("ablation", parse_overrides(["scheduler.type=fifo", "scheduler.rungs=auto"]))


@pytest.mark.parametrize("item, message", [
    ("model.alpha=2", r"--set model\.alpha: this space searches it \(params\.model\.alpha\)"),
    ("train.epoch_scale=0.1", r"--set train\.epoch_scale: not an egomodel config key.*'train\.epochs_scale'"),
    ("resources.gpu=-1", r"with --set resources\.gpu=-1: resources\.gpu: -1.* must be >= 0"),
    ("resources=2", r"--set resources: expected resources\.FIELD=VALUE"),
    ("params.x=1", r"--set params\.x: not an egomodel config key nor a space setting"),
    ("data.root=/x", r"--set data\.root: set by the search itself; use --data"),
    ("train.epochs_scale=-1", r"train\.epochs_scale"),
])
def test_set_refuses_a_searched_unknown_or_bad_key_naming_it(item, message):
    with pytest.raises(SpaceError, match=message):
        load_space("ablation", parse_overrides([item]))


def test_search_refuses_a_bad_set_before_anything_starts(tmp_path, monkeypatch, capsys):
    import ray

    from tuning import search

    monkeypatch.chdir(tmp_path)
    assert search.main(["--space", "smoke", "--set", "model.alpha=2"]) == 2
    assert "--set model.alpha: this space searches it" in capsys.readouterr().err
    assert search.main(["--space", "smoke", "--set", "model.alpha"]) == 2
    assert "override 'model.alpha' is not of the form key=value" in capsys.readouterr().err
    assert not ray.is_initialized() and list(tmp_path.iterdir()) == []


def test_resume_needs_the_same_set(tmp_path):
    from tuning import search
    from tuning.space.overrides import OVERRIDES_PARAM, describe

    path = str(tmp_path / "smoke")
    given = parse_overrides(["train.epochs_scale=0.1", "resources.gpu=0.25"])
    search.save_record(path, {"data_root": "/d", "data_fingerprint": "f", OVERRIDES_PARAM: describe(given)})
    started = search.started_on(path, None, "smoke")
    search.check_same_overrides(path, started, dict(reversed(given.items())))  # the same, in another order
    with pytest.raises(search.SearchError, match=r"--resume refused: .*resources\.gpu: 0\.25 -> \(not set\); "
                                                 r"train\.epochs_scale: 0\.1 -> 0\.2"):
        search.check_same_overrides(path, started, {"train.epochs_scale": 0.2})
    search.check_same_overrides(path, {"data_fingerprint": "f"}, {})  # a search from before --set: none


# ------------------------------------------------------------------------------------------- --dry-run
@pytest.mark.parametrize("space_name", list_spaces())
def test_a_dry_run_of_each_shipped_space_prints_the_plan_and_starts_nothing(space_name, tmp_path, monkeypatch,
                                                                           capsys):
    import ray

    from tuning import search

    monkeypatch.chdir(tmp_path)
    space = load_space(space_name)
    assert search.main(["--space", space_name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"trials: {space.num_samples}; at most {space.max_concurrent} at once" in out
    if space.scheduler.type == "fifo":
        assert "scheduler: fifo" in out
    else:
        rungs = resolve_rungs(space, from_dict({}, space.base))
        assert f"rungs at global epochs {', '.join(map(str, rungs))}" in out
    assert f"resources per trial: cpu {space.resources['cpu']:g}, gpu {space.resources['gpu']:g}" in out
    assert "stage store: " in out and "GPU-hours (estimate): " in out
    assert "benchmarks/results/device_h100.json" in out  # the figures it assumes, and where they come from
    assert not ray.is_initialized() and list(tmp_path.iterdir()) == []


def test_a_dry_run_packs_trials_on_the_cluster_files_node_types_with_the_set_applied(tmp_path, monkeypatch, capsys):
    from tuning import search

    monkeypatch.chdir(tmp_path)
    assert search.main(["--space", "ablation", "--set", "resources.gpu=0.25", "--set", "resources.cpu=2",
                        "--set", "train.epochs_scale=0.1", "--dry-run", "--cluster", str(REPO / "cluster.yaml")]) == 0
    out = capsys.readouterr().out
    assert "resources per trial: cpu 2, gpu 0.25" in out
    assert "gpu_worker (CPU 8, GPU 1): 4 trials at once" in out  # 8 CPUs / 2, 1 GPU / 0.25
    assert "head_cpu (CPU 8, GPU 0): 0 trials at once, by gpu (cannot run a trial)" in out
    assert "feedback: stages 30 + 15 + 20 = 65 epochs" in out  # train.epochs_scale 0.1
    assert list(tmp_path.iterdir()) == []


def test_stage1_prefixes_follow_the_categorical_choices_read_in_stage_1():
    from tuning.dry_run import stage1_prefixes

    table3 = load_space("table3")  # 8 rows x 3 seeds; the seed and the variant act in stage 1
    n, acting = stage1_prefixes(table3, from_dict({}, table3.base))
    assert set(acting) == {"model.variant", "train.seed"} and n < 8 * 3
    smoke = load_space("smoke")  # alpha, tau and stage 3's lr act from stage 2: one shared stage 1
    assert stage1_prefixes(smoke, from_dict({}, smoke.base)) == (1, [])


# ---------------------------------------------------------------------------- where results go; a re-run
def test_results_go_to_one_folder_this_one_or_the_workdir(tmp_path, monkeypatch):
    from tuning.execution.study import storage_uri
    from tuning.results import results_line
    from tuning.tracking.mlflow_runs import artifact_root, tracking_uri, workdir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("EGOSEARCH_WORKDIR", raising=False)

    def line(work: str | None = None) -> str:
        uri = tracking_uri(None, work)
        return results_line(uri, artifact_root(uri, None), storage_uri(None, uri), str(workdir(work) / "ray_results"))

    assert line() == "Results: ./mlflow.db, ./mlartifacts, ./optuna.db, ./ray_results"
    assert line("runs") == "Results: ./runs/mlflow.db, ./runs/mlartifacts, ./runs/optuna.db, ./runs/ray_results"
    monkeypatch.setenv("EGOSEARCH_WORKDIR", str(tmp_path / "env"))  # retrain, export and report read it too
    assert tracking_uri(None) == f"sqlite:///{tmp_path / 'env' / 'mlflow.db'}"
    assert storage_uri(None) == f"sqlite:///{tmp_path / 'env' / 'optuna.db'}"
    assert line("runs").startswith("Results: ./runs/mlflow.db")  # --workdir over the variable
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")  # MLflow's own variable wins
    assert tracking_uri(None, "runs") == "http://mlflow.example:5000"
    assert tracking_uri("sqlite:///x.db", "runs") == "sqlite:///x.db"  # and --tracking-uri over everything


def test_a_rerun_under_a_taken_name_says_what_to_type(tmp_path, monkeypatch, tiny_root, capsys):
    import optuna
    import ray

    from tuning import search

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "w").mkdir()
    for taken in ("smoke", "smoke-2"):  # earlier searches' studies, as a search leaves them
        optuna.create_study(study_name=taken, storage=f"sqlite:///{tmp_path / 'w' / 'optuna.db'}")
    argv = ["--space", "smoke", "--data", str(tiny_root), "--workdir", "w"]
    assert search.main(argv) == 2
    out, err = capsys.readouterr()
    assert "Results: ./w/mlflow.db, ./w/mlartifacts, ./w/optuna.db, ./w/ray_results" in out
    assert f"an Optuna study named 'smoke' already exists in sqlite:///{tmp_path / 'w' / 'optuna.db'}; nothing " \
        "was started" in err
    assert f"continue it:        python -m tuning.search --space smoke --data {tiny_root} --workdir w --resume" in err
    assert f"start a fresh one:  python -m tuning.search --space smoke --data {tiny_root} --workdir w " \
           "--experiment smoke-3" in err
    assert not ray.is_initialized() and not (tmp_path / "w" / "ray_results" / "smoke").exists()


def test_next_free_name_counts_on_from_the_name_given():
    from tuning.results import next_free

    taken = {"smoke", "smoke-2", "smoke-3"}
    assert next_free("smoke", taken.__contains__) == "smoke-4"
    assert next_free("smoke-2", taken.__contains__) == "smoke-4"
    assert next_free("ablation", taken.__contains__) == "ablation-2"


# ---------------------------------------------------------------------------------- the best model, MLflow's way
def test_the_parent_run_says_which_column_ranks_the_trials_and_links_the_best(tmp_path):
    import mlflow

    from tuning.results import search_runs_line
    from tuning.tracking.mlflow_runs import NOTE_TAG, parent_note, parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    space = load_space("smoke")
    parent = parent_run(client, "smoke", str(tmp_path / "ray"), space, "fp", False,
                        artifacts=str(tmp_path / "art"))
    note = client.get_run(parent).data.tags[NOTE_TAG]
    assert "**`best_val_top1`**" in note and "Best trial" not in note
    exp = client.get_run(parent).info.experiment_id
    scores = {}
    for top1 in (0.4, 0.9, 0.6):  # trials as the callback logs them: best_val_top1 when finished
        child = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
        client.log_metric(child, "best_val_top1", top1, step=7)
        client.log_metric(child, "val_top1", 1 - top1, step=7)  # the last epoch's: not the ranking column
        scores[child] = top1
    client.log_metric(parent, "best_val_top1", 0.9)  # the search logs its best on the parent too: not a trial
    best = max(scores, key=scores.get)
    note = parent_note(space, exp, best)
    assert f"[{best}](#/experiments/{exp}/runs/{best})" in note
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        ranked = eval(search_runs_line("smoke"), {"mlflow": mlflow})  # the line the search prints, as typed
    finally:
        mlflow.set_tracking_uri(before)
    assert list(ranked["run_id"]) == sorted(scores, key=scores.get, reverse=True)


# ------------------------------------------------------------------------------------------------ the champion
REGISTER = """
import sys
from pathlib import Path

import mlflow

from tests.test_export import _checkpoint
from tuning.tracking.champion import register

tmp, root = Path(sys.argv[1]), Path(sys.argv[2])
client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
run = client.create_run(client.create_experiment("served", artifact_location=str(tmp / "artifacts")))
print("MODEL", register(client, run.info.run_id, _checkpoint(tmp, root, "attention"), "served"))
"""


def test_a_champion_is_logged_as_model_code_without_warnings_and_predicts(tmp_path, tiny_root):
    import subprocess
    import sys

    import mlflow
    import numpy as np
    import torch

    from egomodel.data.transforms import normalize_frames
    from egomodel.model.checkpoint import load_model
    from tests.conftest import env

    proc = subprocess.run([sys.executable, "-c", REGISTER, str(tmp_path), str(tiny_root)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=300)
    said = proc.stdout + proc.stderr  # what a user registering a champion reads
    assert proc.returncode == 0, said[-3000:]
    assert "type hint" not in said.lower() and "cloudpickle" not in said.lower(), said[-3000:]
    model_uri = said.split("MODEL ", 1)[1].split()[0]
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        flavor = mlflow.models.get_model_info(model_uri).flavors["python_function"]
        assert flavor["model_code_path"].endswith("champion_model.py") and "python_model" not in flavor
        pyfunc = mlflow.pyfunc.load_model(model_uri)
        raw = np.random.default_rng(1).integers(0, 256, (2, 3, 3, 64, 64), dtype=np.uint8)
        got = pyfunc.predict(raw.astype(np.float32))
    finally:
        mlflow.set_tracking_uri(before)
    model, _, classes = load_model(tmp_path / "attention.pt")
    with torch.no_grad():
        expected = torch.softmax(model(normalize_frames(torch.from_numpy(raw))).logits.float(), dim=1).numpy()
    assert got.shape == (2, len(classes)) and np.allclose(got, expected, atol=1e-5)
