"""``python -m tuning.retrain --champion [--model-name NAME] | --run-id ID [--seeds 3] [--address auto]``

Re-trains a chosen trial's configuration on train+val users (no hold-out: each stage keeps its last
epoch, i.e. the whole schedule), once per seed, evaluates each once on the test users. MLflow: one
parent run ``retrain-<trial run name>`` (tags ``retrain_of``, ``retrain_schedule``) with each seed a
nested child run (its ``test_top1``, final checkpoint and files), their mean and standard deviation on
the parent. The parent records what was used: ``data.root``, ``data.val_fraction=0``,
``data.val_users=[]`` and the schedule, never the trial's values.

The schedule is the full one (``train.epochs_scale`` 1.0) whatever scale the search ran at, unless
``--epochs-scale`` says otherwise; the run records which (param ``train.epochs_scale``, the search's
as ``search_epochs_scale``, tag ``epochs_scale_from``).

Where the seeds run: without ``--address`` one after another in this process. With ``--address``
(auto, HOST:PORT, ray://..., local) as parallel Ray tasks, each asking for the trial's resources: the
``resources`` of the space its search ran (the space file the search logged to its parent run), or
``--gpu``/``--cpu``. A cluster that can never give a task its GPU is refused before any training; a
CPU-only retrain is asked for with ``--gpu 0``. Each seed logs its own run from the node it runs on; a
tracking server's login (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``/``_TOKEN`` of this process) reaches
the tasks through their Ray runtime environment.

Resume: the same command again finds its parent run and does not redo a finished seed (child run
FINISHED with its ``test_top1``); a failed seed continues from its checkpoints (see
:mod:`tuning.retrain_seed`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from egomodel.config import Config, ConfigError, from_dict, known_keys
from egomodel.data.layout import DataError
from tuning.retrain_seed import SEED_TAG, SeedJob, log_params, logged_params, run_seed
from tuning.tracking.champion import ALIAS
from tuning.tracking.mlflow_runs import TRACKING_HELP, TrackingError, check_reachable, tracking_uri

CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
OF_TAG, SCHEDULE_TAG = "retrain_of", "retrain_schedule"  # a retrain's parent run is found by these two


class RetrainError(RuntimeError):
    pass


def config_from_params(params: dict[str, str]) -> Config:
    """A child run's dotted params (strings in MLflow) back into an egomodel config."""
    keys = known_keys()
    # string keys stay as logged (an empty path is "", not YAML's null); the rest are YAML values
    values = {k: v if isinstance(keys[k], str) else yaml.safe_load(v) for k, v in params.items() if k in keys}
    if not values:
        raise RetrainError("the run has no egomodel parameters; is it a trial run of tuning.search?")
    return from_dict({}, values)


def champion_run(client: Any, model_name: str | None) -> str:
    if model_name is None:
        names = sorted(m.name for m in client.search_registered_models() if ALIAS in (m.aliases or {}))
        if len(names) != 1:
            raise RetrainError(f"{len(names)} registered models have a '{ALIAS}' alias ({', '.join(names) or 'none'}); "
                               "name one with --model-name")
        model_name = names[0]
    try:
        return client.get_model_version_by_alias(model_name, ALIAS).run_id
    except Exception as e:
        raise RetrainError(f"no '{ALIAS}' version of model {model_name}: {e}") from None


def schedule(epochs_scale: float | None, source_params: dict[str, str]) -> tuple[float, str, str]:
    """The retrain's ``train.epochs_scale``, where it comes from, and the search's own scale."""
    searched = source_params.get("train.epochs_scale", "1.0")
    if epochs_scale is None:
        return 1.0, "full schedule", searched
    if not epochs_scale > 0:
        raise RetrainError(f"--epochs-scale must be > 0, got {epochs_scale}")
    return epochs_scale, "--epochs-scale", searched


def retrain_config(source_params: dict[str, str], data: str | None, scale: float) -> Config:
    """The configuration a retrain trains (before its seed): the trial's, on train+val users, the data
    root given (default: the trial's), the schedule chosen."""
    cfg = config_from_params(source_params)
    root = str(Path(data).expanduser().resolve()) if data else cfg.data.root
    return from_dict(cfg.to_dict(), {"data.val_fraction": 0.0, "data.val_users": [], "data.root": root,
                                     "train.epochs_scale": scale})


def seed_resources(client: Any, source: Any, gpu: float | None, cpu: float | None) -> dict[str, float]:
    """What each seed's Ray task asks for: the trial's resources, i.e. the ``resources`` of the space file
    its search logged to its parent run with the search's ``--set`` applied (the parent's param
    ``overrides``); ``--gpu``/``--cpu`` replace them."""
    space: dict[str, float] = {}
    if gpu is None or cpu is None:
        space = _space_resources(client, source)
        if space is None:
            raise RetrainError(f"run {source.info.run_id} has no search parent run with its space file, so its "
                               "trial's resources are unknown: give --gpu and --cpu")
    res = {"cpu": float(cpu if cpu is not None else space.get("cpu", 1)),
           "gpu": float(gpu if gpu is not None else space.get("gpu", 0))}
    if res["cpu"] < 0 or res["gpu"] < 0:
        raise RetrainError(f"--cpu and --gpu must be >= 0, got {res}")
    return res


def _space_resources(client: Any, source: Any) -> dict[str, float] | None:
    import json

    from tuning.space import SpaceError, load_space
    from tuning.space.overrides import OVERRIDES_PARAM

    parent = source.data.tags.get("mlflow.parentRunId")
    if not parent:
        return None
    files = [a.path for a in client.list_artifacts(parent, "space") if a.path.endswith((".yaml", ".yml"))]
    if not files:
        return None
    with tempfile.TemporaryDirectory(prefix="retrain-space-") as d:
        try:
            overrides = json.loads(client.get_run(parent).data.params.get(OVERRIDES_PARAM) or "{}")
            return dict(load_space(Path(client.download_artifacts(parent, files[0], d)), overrides).resources)
        except SpaceError as e:
            raise RetrainError(f"the space file of the search (run {parent}, {files[0]}): {e}; give --gpu and "
                               "--cpu") from None


def check_cluster(resources: dict[str, float], address: str) -> None:
    """Refuse, before any training, a cluster on which no seed's task can ever run (no node alive fits and
    no node type that could be launched does), naming what was asked and what there is."""
    from tuning.execution import feasibility as fz

    bundle = fz.ray_bundle(resources)
    alive = fz.alive_nodes()
    if any(fz.fits(bundle, r) for r in alive):
        return
    types = None if address == "local" else fz.node_types()
    later = None if address == "local" else fz.adds_nodes_later()
    if types is None and later:
        print(f"note: no node alive can run a seed's task {fz.describe(bundle)} yet; {later} may add one",
              flush=True)
        return
    if types is not None and any(fz.fits(bundle, r) for r in types.values()):
        return
    kinds = ("; node types: " + "; ".join(f"{n} {fz.describe(r)}" for n, r in types.items())) if types else ""
    cpu_only = " (a CPU-only retrain: --gpu 0)" if bundle.get("GPU") else ""
    raise RetrainError(f"each seed's task asks for {fz.describe(bundle)}, but no node of the cluster at {address} "
                       f"can ever provide it: nodes alive: {'; '.join(fz.describe(r) for r in alive) or 'none'}"
                       f"{kinds}. Give --gpu/--cpu that a node has{cpu_only}, or add a GPU node type.")


def parent_run(client: Any, source: Any, cfg: Config, scale_from: str, searched: str) -> str:
    """The retrain's parent run: the one an earlier same command made (same trial, same schedule), else a
    new one. Its params are the configuration actually trained (without the seed)."""
    run_id, scale = source.info.run_id, str(cfg.train.epochs_scale)
    found = client.search_runs([source.info.experiment_id],
                               f"tags.{OF_TAG} = '{run_id}' and tags.{SCHEDULE_TAG} = '{scale}'",
                               max_results=1, order_by=["attributes.start_time DESC"])
    params = {k: v for k, v in logged_params(cfg).items() if k != "train.seed"}
    params["search_epochs_scale"] = searched
    if found:
        parent = found[0]
        differ = sorted(k for k, v in params.items() if k in parent.data.params and parent.data.params[k] != v)
        if differ:
            raise RetrainError(f"the retrain run {parent.info.run_id} of this trial and schedule trained with other "
                               + ", ".join(f"{k}={parent.data.params[k]}" for k in differ)
                               + "; give the same values (e.g. --data) to continue it")
        client.update_run(parent.info.run_id, status="RUNNING")
        print(f"continuing retrain run {parent.info.run_id}")
        return parent.info.run_id
    parent = client.create_run(source.info.experiment_id, run_name=f"retrain-{source.info.run_name}",
                               tags={OF_TAG: run_id, SCHEDULE_TAG: scale, "kind": "retrain",
                                     "epochs_scale_from": scale_from})
    log_params(client, parent.info.run_id, params)
    return parent.info.run_id


def seed_runs(client: Any, parent: Any, seeds: list[int], cfg: Config | None = None) -> dict[int, Any]:
    """Each seed's child run: the existing one, else a new one (its params: ``cfg`` with its seed)."""
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  max_results=10000)
    have = {int(r.data.tags[SEED_TAG]): r for r in children if SEED_TAG in r.data.tags}
    for seed in seeds:
        if seed not in have:
            have[seed] = client.create_run(parent.info.experiment_id, run_name=f"seed{seed}", tags={
                "mlflow.parentRunId": parent.info.run_id, SEED_TAG: str(seed), "kind": "retrain-seed"})
            log_params(client, have[seed].info.run_id, logged_params(from_dict(cfg.to_dict(), {"train.seed": seed})))
    return have


def finished(run: Any) -> bool:
    return run.info.status == "FINISHED" and "test_top1" in run.data.metrics


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuning.retrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--champion", action="store_true", help="the registered model with the 'champion' alias")
    who.add_argument("--run-id", help="an MLflow trial run to re-train")
    p.add_argument("--model-name", default=None, help="registered model name (with --champion)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--data", default=None, help="data root (default: the run's data.root)")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    p.add_argument("--epochs-scale", type=float, default=None,
                   help="scale every stage's epochs (default 1.0: the full schedule, whatever the search ran at)")
    p.add_argument("--out", default="retrain", help="working folder on the node of each seed (one subfolder per seed)")
    p.add_argument("--address", default=None,
                   help="run the seeds as Ray tasks on this cluster (auto, HOST:PORT, ray://HOST:10001, local); "
                        "default: one after another in this process")
    p.add_argument("--gpu", type=float, default=None, help="GPUs per seed with --address (default: the space's)")
    p.add_argument("--cpu", type=float, default=None, help="CPUs per seed with --address (default: the space's)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except (RetrainError, TrackingError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise RetrainError(f"--seeds must be >= 1, got {args.seeds}")
    if args.address is None and (args.gpu is not None or args.cpu is not None):
        raise RetrainError("--gpu/--cpu are what each seed's Ray task asks for: give them with --address")
    args.tracking_uri = tracking_uri(args.tracking_uri)
    client = check_reachable(args.tracking_uri)
    run_id = champion_run(client, args.model_name) if args.champion else args.run_id
    try:
        source = client.get_run(run_id)
    except Exception as e:
        raise RetrainError(f"run {run_id} not found at {args.tracking_uri}: {e}") from None
    scale, scale_from, searched = schedule(args.epochs_scale, source.data.params)
    cfg = retrain_config(source.data.params, args.data, scale)
    resources = seed_resources(client, source, args.gpu, args.cpu) if args.address is not None else None
    if resources is not None:
        from tuning.execution.connect import ConnectError, connect_ray

        try:
            connect_ray(args.address)
        except ConnectError as e:
            raise RetrainError(str(e)) from None
        check_cluster(resources, args.address)
    print(f"schedule: train.epochs_scale {scale} ({scale_from}; the search ran at {searched})")
    parent_id = parent_run(client, source, cfg, scale_from, searched)
    parent = client.get_run(parent_id)
    seeds = [cfg.train.seed + i for i in range(args.seeds)]
    runs = seed_runs(client, parent, seeds, cfg)
    client.set_tag(parent_id, "seeds", ",".join(str(s) for s in seeds))
    out = Path(args.out).expanduser().resolve() / run_id
    jobs = {s: SeedJob(args.tracking_uri, runs[s].info.run_id, from_dict(cfg.to_dict(), {"train.seed": s}).to_dict(),
                       str(out / f"seed{s}"), on_ray=resources is not None)
            for s in seeds if not finished(runs[s])}
    for s in seeds:
        if s not in jobs:
            print(f"seed {s}: finished before (run {runs[s].info.run_id}), not trained again")
    try:
        failed = run_on_ray(jobs, resources) if resources is not None else run_here(jobs)
    except BaseException:  # bad input met by a seed, or Ctrl-C: the parent run does not stay RUNNING
        client.set_terminated(parent_id, "FAILED")
        raise
    return aggregate(client, parent_id, seeds, failed)


def run_here(jobs: dict[int, SeedJob]) -> dict[int, str]:
    """The seeds one after another in this process; the failed ones and why."""
    failed = {}
    for i, (seed, job) in enumerate(jobs.items()):
        print(f"seed {seed} ({i + 1}/{len(jobs)})", flush=True)
        try:
            run_seed(job)
        except (ConfigError, DataError):
            raise
        except Exception as e:  # noqa: BLE001 - the other seeds still train; the failure is reported
            failed[seed] = f"{type(e).__name__}: {e}"
    return failed


def run_on_ray(jobs: dict[int, SeedJob], resources: dict[str, float]) -> dict[int, str]:
    """The seeds as parallel Ray tasks (retried by Ray when their node is lost); the failed ones and why."""
    import ray

    # a tracking server's login (the head's MLFLOW_TRACKING_* variables): the workers log the seeds' runs
    login = {k: os.environ[k] for k in CREDENTIAL_ENV if os.environ.get(k)}
    task = ray.remote(run_seed).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"], max_retries=2,
                                        retry_exceptions=False,
                                        **({"runtime_env": {"env_vars": login}} if login else {}))
    refs = {task.remote(job): seed for seed, job in jobs.items()}
    print(f"{len(refs)} seed(s) as Ray tasks, each asking {resources}", flush=True)
    failed = {}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        seed = refs[done[0]]
        try:
            m = ray.get(done[0])
            print(f"seed {seed}: test top-1 {m['test_top1']:.4f}", flush=True)
        except Exception as e:  # noqa: BLE001 - a failed task: reported with the others
            failed[seed] = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return failed


def aggregate(client: Any, parent_id: str, seeds: list[int], failed: dict[int, str]) -> int:
    """Every seed's test top-1 (read back from its run), their mean and deviation on the parent."""
    parent = client.get_run(parent_id)
    runs = seed_runs(client, parent, [])
    if failed:
        for seed, why in sorted(failed.items()):
            print(f"seed {seed} failed (run {runs[seed].info.run_id}): {why}", file=sys.stderr)
        client.set_terminated(parent_id, "FAILED")
        print("run the same command again to continue the failed seeds from their checkpoints", file=sys.stderr)
        return 1
    tops = np.array([runs[s].data.metrics["test_top1"] for s in seeds])
    for i, (seed, top) in enumerate(zip(seeds, tops, strict=True)):
        client.log_metric(parent_id, "test_top1", float(top), step=i)
        client.log_metric(parent_id, f"test_top1_seed{seed}", float(top))
    std = float(tops.std(ddof=1)) if len(tops) > 1 else 0.0
    client.log_metric(parent_id, "test_top1_mean", float(tops.mean()))
    client.log_metric(parent_id, "test_top1_std", std)
    client.set_terminated(parent_id, "FINISHED")
    print(f"test top-1 over {len(tops)} seed(s): {tops.mean():.4f} ± {std:.4f}  (MLflow run {parent_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
