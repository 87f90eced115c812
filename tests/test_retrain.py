"""Retrain: the full schedule by default, what the retrain run records, two-stream trials, resume of a
retrain, the champion's model named, and seeds as Ray tasks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import env, tiny_config, write_space
from tuning.retrain import RetrainError, main, parser, schedule
from tuning.retrain_seed import SEED_TAG, log_params, logged_params


def test_the_full_schedule_by_default_and_the_flag_when_given():
    searched = {"train.epochs_scale": "0.01"}
    assert schedule(None, searched) == (1.0, "full schedule", "0.01")
    assert schedule(0.5, searched) == (0.5, "--epochs-scale", "0.01")
    assert schedule(None, {}) == (1.0, "full schedule", "1.0")
    with pytest.raises(RetrainError, match="--epochs-scale must be > 0"):
        schedule(0.0, searched)


def trial_run(tmp: Path, uri: str, variant: str = "convlstm", resources: dict | None = None) -> str:
    """A search's trial run as the search leaves it: a parent run holding the space file, a child run
    with the trial's config as params (its own data root and validation split, a search's short scale)."""
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("test_space", artifact_location=None if uri.startswith("http") else
                                   str(tmp / "artifacts"))
    space = write_space(tmp, **({"resources": resources} if resources else {}))
    parent = client.create_run(exp, run_name="search-test_space").info.run_id
    client.log_artifact(parent, str(space), "space")
    cfg = tiny_config(tmp / "trial-data", model__variant=variant, data__val_fraction=0.25, train__epochs_scale=0.01)
    child = client.create_run(exp, run_name="trial-1", tags={"mlflow.parentRunId": parent}).info.run_id
    log_params(client, child, logged_params(cfg))
    client.set_terminated(child, "FINISHED")
    return child


def retrain_runs(client: mlflow.MlflowClient) -> tuple[list, list]:
    exp = client.get_experiment_by_name("test_space").experiment_id
    return (client.search_runs([exp], "tags.kind = 'retrain'"),
            client.search_runs([exp], "tags.kind = 'retrain-seed'", order_by=["tags.retrain_seed"]))


def test_a_two_stream_trial_retrains_and_the_run_records_what_it_used(tiny_root, tmp_path, capsys):
    """A two-stream trial (no stream checkpoints in its params) retrains its streams, then the joint
    stage; the parent run records the data root, validation and schedule used, not the trial's."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rid = trial_run(tmp_path, uri, "two_stream")
    assert main(["--run-id", rid, "--seeds", "1", "--epochs-scale", "0.005", "--data", str(tiny_root),
                 "--tracking-uri", uri, "--out", str(tmp_path / "rt")]) == 0, capsys.readouterr().err
    parents, seeds = retrain_runs(mlflow.MlflowClient(uri))
    assert len(parents) == 1 and len(seeds) == 1
    p = parents[0].data.params
    assert p["data.root"] == str(tiny_root) and p["data.val_fraction"] == "0.0" and p["data.val_users"] == "[]"
    assert p["train.epochs_scale"] == "0.005" and p["search_epochs_scale"] == "0.01"
    assert p["model.variant"] == "two_stream" and "train.seed" not in p
    assert parents[0].data.tags["retrain_schedule"] == "0.005" and parents[0].info.run_name == "retrain-trial-1"
    seed = seeds[0]
    assert seed.info.status == "FINISHED" and seed.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert seed.data.params["train.seed"] == "0" and seed.data.params["data.root"] == str(tiny_root)
    assert parents[0].data.metrics["test_top1_mean"] == seed.data.metrics["test_top1"]
    work = tmp_path / "rt" / rid / "seed0"
    assert {"flow", "attention"} <= {d.name for d in (work / "streams").iterdir()}  # both streams trained here
    names = [a.path for a in mlflow.MlflowClient(uri).list_artifacts(seed.info.run_id, "checkpoint")]
    assert names == ["checkpoint/stage1_best.pt"]


def test_a_rerun_skips_finished_seeds_and_continues_a_failed_one(tiny_root, tmp_path, monkeypatch, capsys):
    """Seed 0 finishes, seed 1 fails after its first epoch (its run FAILED, its checkpoints kept in MLflow);
    the same command again, on a node without the seed's folder, trains seed 0 no more and continues seed 1
    from its epoch, under the same parent and child runs."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rid = trial_run(tmp_path, uri)
    args = ["--run-id", rid, "--seeds", "2", "--epochs-scale", "0.005", "--data", str(tiny_root),
            "--tracking-uri", uri, "--out", str(tmp_path / "rt")]
    from egomodel.training import engine

    real_train, calls = engine.train, []

    def crashing(cfg, out, callback=None, resume=False, **kw):  # noqa: ANN001
        calls.append((cfg.train.seed, resume))

        def report(r):  # noqa: ANN001
            callback(r)
            if cfg.train.seed == 1 and r.global_epoch == 1 and len(calls) == 2:
                raise RuntimeError("node lost")
        return real_train(cfg, out, callback=report, resume=resume, **kw)

    monkeypatch.setattr(engine, "train", crashing)  # the seed imports the engine's train when it runs
    assert main(args) == 1
    assert "seed 1 failed" in capsys.readouterr().err
    client = mlflow.MlflowClient(uri)
    parents, seeds = retrain_runs(client)
    assert [s.info.status for s in seeds] == ["FINISHED", "FAILED"] and parents[0].info.status == "FAILED"
    shutil.rmtree(tmp_path / "rt")  # the rerun runs where the first run's files are not
    assert main(args) == 0
    assert "seed 0: finished before" in capsys.readouterr().out
    assert calls == [(0, False), (1, False), (1, True)]  # seed 1 resumed; seed 0 not trained again
    parents2, seeds2 = retrain_runs(client)
    assert [r.info.run_id for r in parents2] == [r.info.run_id for r in parents]
    assert [r.info.run_id for r in seeds2] == [r.info.run_id for r in seeds]
    assert [s.info.status for s in seeds2] == ["FINISHED", "FINISHED"] and parents2[0].info.status == "FINISHED"
    assert seeds2[0].info.end_time == seeds[0].info.end_time
    m = parents2[0].data.metrics
    assert m["test_top1_mean"] == pytest.approx((m["test_top1_seed0"] + m["test_top1_seed1"]) / 2)


def test_champion_with_several_registered_models_names_them(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rid = trial_run(tmp_path, uri)
    client = mlflow.MlflowClient(uri)
    for name in ("egosearch-ablation", "egosearch-table3"):
        client.create_registered_model(name)
        v = client.create_model_version(name, f"runs:/{rid}/model", run_id=rid)
        client.set_registered_model_alias(name, "champion", v.version)
    assert main(["--champion", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "2 registered models have a 'champion' alias (egosearch-ablation, egosearch-table3)" in err
    assert "--model-name" in err
    assert retrain_runs(client) == ([], [])


def test_seeds_run_as_ray_tasks_and_a_cluster_without_their_gpu_is_refused(tiny_root, tmp_path, server):
    """On a one-node CPU Ray: a trial whose space asks for a GPU is refused before any run is written;
    with --gpu 0 the seeds run as Ray tasks, each logging its own run to the tracking server."""
    srv = server.start()
    rid = trial_run(tmp_path, srv.uri, resources={"cpu": 1, "gpu": 1})
    cmd = [sys.executable, "-m", "tuning.retrain", "--run-id", rid, "--seeds", "2", "--epochs-scale", "0.005",
           "--data", str(tiny_root), "--tracking-uri", srv.uri, "--out", str(tmp_path / "rt"), "--address", "local"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "each seed's task asks for {CPU: 1, GPU: 1}" in proc.stderr and "--gpu 0" in proc.stderr
    client = mlflow.MlflowClient(srv.uri)
    assert retrain_runs(client) == ([], [])
    proc = subprocess.run([*cmd, "--gpu", "0"], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 seed(s) as Ray tasks, each asking {'cpu': 1.0, 'gpu': 0.0}" in proc.stdout
    parents, seeds = retrain_runs(client)
    assert len(parents) == 1 and [s.data.tags[SEED_TAG] for s in seeds] == ["0", "1"]
    for s in seeds:
        assert s.info.status == "FINISHED" and "test_top1" in s.data.metrics
        files = {a.path for a in client.list_artifacts(s.info.run_id)}
        assert {"checkpoint", "metrics.json", "config.yaml"} <= files
        cfg = yaml.safe_load(Path(client.download_artifacts(s.info.run_id, "config.yaml", str(tmp_path))).read_text())
        assert cfg["train"]["seed"] == int(s.data.tags[SEED_TAG])
    assert set(parents[0].data.metrics) >= {"test_top1_mean", "test_top1_std", "test_top1_seed0", "test_top1_seed1"}


def test_the_documented_cluster_command_parses():
    """docs/cluster.md's retrain on the cluster, as a user types it, is a command this parser takes."""
    import re
    import shlex

    text = (Path(__file__).resolve().parents[1] / "docs" / "cluster.md").read_text()
    found = re.findall(r"ray exec cluster\.yaml --tmux 'cd ~/egosearch && (python -m tuning\.retrain .*?)'", text,
                       re.DOTALL)
    assert len(found) == 1
    words = shlex.split(found[0].replace("\\\n", " "))
    args = parser().parse_args(words[3:])
    assert args.champion and args.seeds == 3 and args.address == "auto" and args.data == "/data/GTEA61"


def test_seed_resources_are_the_searched_spaces_with_its_set_applied(tmp_path):
    """A search run with `--set resources.cpu=1 --set resources.gpu=0` (a CPU cluster) retrains its seeds with
    those resources, not the space file's `cpu: 4, gpu: 0.5` (found by tests/test_rehearsal.py)."""
    from types import SimpleNamespace

    from tuning.retrain import seed_resources
    from tuning.space import SPACES_DIR

    class Client:  # the two MLflow calls seed_resources makes on the search's parent run
        def list_artifacts(self, run_id, path):
            return [SimpleNamespace(path="space/ablation.yaml")]

        def download_artifacts(self, run_id, path, dst):
            return str(shutil.copy(SPACES_DIR / "ablation.yaml", dst))

        def get_run(self, run_id):
            overrides = '{"resources.cpu": 1, "resources.gpu": 0}'
            return SimpleNamespace(data=SimpleNamespace(params={"overrides": overrides}))

    trial = SimpleNamespace(data=SimpleNamespace(tags={"mlflow.parentRunId": "parent"}),
                            info=SimpleNamespace(run_id="t"))
    assert seed_resources(Client(), trial, None, None) == {"cpu": 1.0, "gpu": 0.0}
    assert seed_resources(Client(), trial, 0.5, None) == {"cpu": 1.0, "gpu": 0.5}
