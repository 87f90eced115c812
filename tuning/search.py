"""``python -m tuning.search --space NAME|PATH [--data PATH] ...``: the distributed search.

Ray Tune schedules trials on the given cluster (a local one by default), Optuna's TPE proposes each
trial's configuration, ASHA stops weak trials, every trial runs egomodel's stages, and the driver
mirrors everything into MLflow and registers the best trial's model as ``champion``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

from egomodel.cli import run_cli
from egomodel.config import Config, ConfigError, from_dict, parse_overrides
from egomodel.data.dataset import load_bundle, resolve_root
from egomodel.data.layout import DataError
from egomodel.training.stages import stage_plan
from tuning.execution import feasibility, storage_check, weights_check
from tuning.execution.connect import ConnectError, connect_ray
from tuning.execution.leases import start_lease_actor
from tuning.execution.study import (
    WARM_TAG,
    StudyError,
    check_new_study,
    has_study,
    open_storage,
    record_study,
    redact,
    storage_uri,
    study_record,
    warm_trials,
)
from tuning.results import next_free, rerun_refusal, results_line
from tuning.space.errors import SpaceError
from tuning.space.load import load_space
from tuning.space.overrides import OVERRIDES_PARAM
from tuning.space.overrides import describe as describe_overrides
from tuning.space.overrides import difference as overrides_difference
from tuning.space.rungs import resolve_rungs
from tuning.space.sampling import decode, runtime_overrides
from tuning.space.types import SearchSpace
from tuning.tracking.mlflow_runs import (
    TRACKING_HELP,
    TrackingError,
    artifact_root,
    check_artifact_root,
    check_reachable,
    experiment_id,
    find_parent,
    parent_run,
    workdir,
)
from tuning.tracking.mlflow_runs import tracking_uri as resolve_tracking_uri
from tuning.tracking.pareto import ParetoError, champion_rule, pick_from_front
from tuning.tracking.policy import CHECKPOINT_DIR, LOG_CHECKPOINTS, POLICY_PARAM

REPO = Path(__file__).resolve().parents[1]
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file")  # pyarrow filesystems Ray can use
RECORD = "egosearch.json"  # in the search's Ray folder: the data it started on, checked by --resume


class SearchError(RuntimeError):
    pass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuning.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="smoke", help="a name under search_spaces/ or a YAML path (default: smoke)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change the space (repeatable): an egomodel key sets base (train.epochs_scale=0.1); "
                        "resources.cpu|gpu, num_samples, max_concurrent, scheduler.FIELD, checkpoint_interval_s "
                        "set the space's own; a searched key is refused (docs/search_spaces.md)")
    p.add_argument("--data", default=None, help="GTEA61 root; default: the built-in synthetic set")
    p.add_argument("--num-samples", type=int, default=None, help="trials (default: the space's num_samples)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: the space's)")
    p.add_argument("--address", default=None, help="Ray cluster: auto, ray://HOST:10001; default: start a local one")
    p.add_argument("--storage", default=None,
                   help="Ray storage path or URI (s3://...); default: ray_results in the work folder")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="the folder of the default stores: mlflow.db, mlartifacts, optuna.db, ray_results (default: "
                        "$EGOSEARCH_WORKDIR, else this folder); --tracking-uri, --storage, --optuna-storage win")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    p.add_argument("--experiment", default=None, help="MLflow experiment and Ray run name (default: space name)")
    p.add_argument("--model-name", default=None, help="registered model name (default: egosearch-EXPERIMENT)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search of the same name")
    p.add_argument("--seed", type=int, default=None, help="training seed and TPE seed (default: the space's seed)")
    p.add_argument("--optuna-storage", default=None, metavar="URI",
                   help="Optuna storage of the study (named as the experiment); default: optuna.db beside a SQLite "
                        "tracking store, ~/mlflow/optuna.db with a tracking server; a database server: "
                        "postgresql://USER@HOST/DB (password from ~/.pgpass or PGPASSWORD)")
    p.add_argument("--warm-start", default=None, metavar="STUDY_OR_EXPERIMENT",
                   help="add the finished trials of an earlier search's study that fit this space before the first "
                        "trial (a study of that name in --optuna-storage, else that MLflow experiment's study)")
    p.add_argument("--max-gflops", type=float, default=None, metavar="X",
                   help="multi-objective spaces: the champion is the most accurate Pareto-front trial within X GFLOPs "
                        "per clip (default: the space's champion.max_gflops)")
    p.add_argument("--min-top1", type=float, default=None, metavar="Y",
                   help="multi-objective spaces: the champion is the cheapest front trial with val_top1 >= Y (with "
                        "--max-gflops: the most accurate within the budget among those; default: the space's)")
    p.add_argument("--artifact-root", default=None, metavar="PATH_OR_URI",
                   help="where a new MLflow experiment keeps its artifacts (a folder, s3://...); default: "
                        "mlartifacts/ beside a SQLite --tracking-uri, the server's choice for http://")
    p.add_argument("--log-checkpoints", default=None, choices=LOG_CHECKPOINTS,
                   help="which trial runs keep their best weights in MLflow: best (default: finished trials), "
                        "all (early-stopped ones too), champion-only (logged at the end), none; set when a "
                        "search starts")
    p.add_argument("--no-stage-store", action="store_true",
                   help="compute every trial's stages itself (default: share identical stage prefixes)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what the search would do (trials, rungs, resources and packing, stage reuse, an "
                        "estimate of GPU-hours) and stop: no Ray, nothing written")
    p.add_argument("--cluster", default=None, metavar="FILE",
                   help="with --dry-run: the Ray cluster file whose node types the trials are packed on "
                        "(default: this machine)")
    return p


def _positive(name: str, v: int | None) -> None:
    if v is not None and v < 1:
        raise SearchError(f"{name} must be >= 1, got {v}")


def base_config(space: SearchSpace, extra: dict[str, Any]) -> Config:
    try:
        return from_dict({}, {**space.base, **extra})
    except ConfigError as e:
        raise SpaceError(f"{space.name}: base: {e}") from None


def trial_resources(space: SearchSpace, address: str | None) -> dict[str, float]:
    """What each trial asks Ray for: exactly the space's ``resources`` on a cluster given by ``--address``
    (an autoscaling cluster has no GPU node until a trial asks for one, and Ray 2.60 gives a driver no
    public list of the node types it could launch); only the local Ray the search starts itself, on a
    machine without a GPU, runs the trials on CPU, and says so."""
    import ray

    res = dict(space.resources)
    if address is None and res.get("gpu", 0) > 0 and ray.cluster_resources().get("GPU", 0) == 0:
        print(f"note: this machine has no GPU; the local trials run on CPU (the space asked for gpu {res['gpu']})")
        res["gpu"] = 0
    return res


def save_record(path: str, record: dict[str, str]) -> None:
    from tuning.execution.stage_store import filesystem

    fs, root = filesystem(path)
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root}/{RECORD}") as f:
            f.write(json.dumps(record).encode())
    except OSError as e:
        raise SearchError(f"cannot write {root}/{RECORD}: {e}") from None


def started_on(path: str, client: Any, name: str) -> dict[str, str | None] | None:
    """The data a saved search started on: its record next to Ray's state, else (a search started
    before records were written) its MLflow parent run's tags; None when neither says."""
    from tuning.execution.stage_store import filesystem

    fs, root = filesystem(path)
    try:
        with fs.open_input_stream(f"{root}/{RECORD}") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        pass
    run = find_parent(client, name, path)
    if run is None or "data_fingerprint" not in run.data.tags:
        return None
    return {"data_fingerprint": run.data.tags["data_fingerprint"], "data_root": run.data.tags.get("data_root"),
            OVERRIDES_PARAM: run.data.params.get(OVERRIDES_PARAM, "{}")}


def check_same_data(path: str, started: dict[str, str | None] | None, data_root: str, fingerprint: str) -> None:
    """``--resume`` on changed data would mix trials trained on two data sets: refused up front."""
    if started is None or started.get("data_fingerprint") == fingerprint:
        return
    raise SearchError(
        f"--resume refused: the data set changed since the search at {path} started. It started on "
        f"{started.get('data_root') or '(root not recorded)'} with data fingerprint {started.get('data_fingerprint')}; "
        f"the data at {data_root} now has fingerprint {fingerprint} (clips added, removed or resized). Restore "
        "that data, or start a new search (another --experiment name)."
    )


def check_same_overrides(path: str, started: dict[str, str | None] | None, overrides: dict[str, Any]) -> None:
    """``--resume`` continues a search with the ``--set`` it started with (none before they were recorded)."""
    recorded = json.loads((started or {}).get(OVERRIDES_PARAM) or "{}")
    changed = overrides_difference(recorded, overrides)
    if changed:
        raise SearchError(f"--resume refused: the search at {path} started with --set {recorded or 'nothing'}; "
                          f"this command differs ({'; '.join(changed)}). Resume with the same --set, or start a "
                          "new search (another --experiment name)")


def study_storage(args: argparse.Namespace, name: str, tracking_uri: str) -> str:
    """The Optuna storage URI of this search; ``--warm-start`` starts a new search only."""
    if args.warm_start and args.resume:
        raise SearchError("--warm-start starts a new search; a resumed search keeps the trials it has")
    if args.warm_start == name:
        raise SearchError(f"--warm-start {name}: that is this search's own name; name an earlier search")
    return storage_uri(args.optuna_storage, tracking_uri)


def pick_best(results: Any, space: SearchSpace) -> Any | None:
    """Best finished trial by the space's metric, which a finished trial reports for the weights it hands over
    (the kept checkpoint's: ``tuning.execution.trainable.kept_score``), so the trial ranked first is the
    model registered; early-stopped and failed trials are not candidates."""
    done = [r for r in results if r.error is None and r.metrics and r.metrics.get("final")]
    if not done:
        return None
    sign = 1 if space.mode == "max" else -1
    return max(done, key=lambda r: sign * float(r.metrics[space.metric]))


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)  # the command as typed: what to type next repeats it
    _positive("--num-samples", args.num_samples)
    _positive("--max-concurrent", args.max_concurrent)
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise SearchError(f"--seed must be in [0, 2**32), got {args.seed}")
    overrides = parse_overrides(args.set)
    space = load_space(args.space, overrides)  # a bad space (or --set) fails here, before anything starts
    champion_rule(space, args.max_gflops, args.min_top1)
    if args.warm_start and space.objectives:
        raise SearchError(f"--warm-start: the space {space.name} has objectives; warm start adds the trials of a "
                          "single-metric study and cannot fill a multi-objective one")
    for flag, value in (("--experiment (or the space's name)", args.experiment or space.name),
                        ("--model-name", args.model_name)):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise SearchError(f"{flag} {value!r}: use letters, digits, '.', '_' and '-' (it names a folder, "
                              "an MLflow experiment and a registered model)")
    seed = space.seed if args.seed is None else args.seed
    if args.cluster and not args.dry_run:
        raise SearchError("--cluster FILE is read by --dry-run only (a search runs on --address)")
    if args.dry_run:
        from tuning.dry_run import report

        print(report(space, args.num_samples, args.max_concurrent, args.cluster, not args.no_stage_store))
        return 0
    if args.data is None:
        print("no --data given: using the built-in synthetic data set (generated once, cached)")
    data_root = str(resolve_root(args.data or "synthetic").resolve())
    extra = runtime_overrides(space, data_root, seed)
    cfg = base_config(space, extra)
    variants = {cfg.model.variant, *(c for p in space.params if p.key == "model.variant" for c in p.choices)}
    # clips are checked for the most frames a trial can read
    frames = [int(v) for p in space.params if p.key == "data.frames" for v in (p.choices or (p.high,))]
    data_cfg = dataclasses.replace(cfg.data, frames=max(frames)) if frames else cfg.data
    bundle = load_bundle(data_cfg, cfg.train.seed, need_mmaps=bool(variants & {"ms", "feedback"}),
                         need_flow=bool(variants & {"flow", "two_stream"}))
    storage = args.storage or str(workdir(args.workdir) / "ray_results")
    if "://" not in storage:  # Ray and pyarrow need absolute local paths
        storage = str(Path(storage).expanduser().resolve())
    elif storage.split("://", 1)[0] not in STORAGE_SCHEMES:
        raise SearchError(f"--storage {storage}: unknown scheme; give a path, s3://BUCKET/..., gs://BUCKET/... "
                          "or another pyarrow filesystem URI")
    name = args.experiment or space.name
    tracking_uri = resolve_tracking_uri(args.tracking_uri, args.workdir)
    client = check_reachable(tracking_uri)
    artifacts = artifact_root(tracking_uri, args.artifact_root)
    if args.artifact_root and client.get_experiment_by_name(name):  # it keeps its artifacts elsewhere: refused
        experiment_id(client, name, artifacts, explicit=True)
    if args.artifact_root:
        check_artifact_root(artifacts)
    if args.resume and args.log_checkpoints:
        raise SearchError("--log-checkpoints is set when a search starts; a resumed search keeps its own")

    from ray import tune

    from tuning.execution.schedulers import state_callbacks
    from tuning.execution.searcher import make_scheduler, make_searcher
    from tuning.execution.trainable import TrialSetup, run_trial, total_epochs
    from tuning.tracking.callback import MlflowCallback

    path = storage.rstrip("/") + "/" + name

    def saved(n: str) -> bool:
        try:
            return tune.Tuner.can_restore(storage.rstrip("/") + "/" + n)
        except (OSError, ValueError) as e:  # pyarrow: a malformed URI, a bucket that cannot be reached
            raise SearchError(f"--storage {storage}: cannot be read: {e}") from None

    exists = saved(name)
    if args.resume and not exists:
        raise SearchError(f"--resume: nothing to resume at {path} (no search named {name!r} there)")
    study_uri = study_storage(args, name, tracking_uri)
    print(results_line(tracking_uri, artifacts, study_uri, storage))
    print(f"Optuna study {name!r} in {redact(study_uri)}")
    optuna_storage = open_storage(study_uri)
    if not args.resume and (exists or has_study(optuna_storage, name)):  # say what to type next
        found = f"a search named {name!r} already exists at {path}" if exists else \
            f"an Optuna study named {name!r} already exists in {redact(study_uri)}"
        fresh = next_free(name, lambda n: saved(n) or has_study(optuna_storage, n)
                          or client.get_experiment_by_name(n) is not None)
        raise SearchError(rerun_refusal(argv, found, fresh))
    check_new_study(optuna_storage, study_uri, name, args.resume)
    record = study_record(space, [s.epochs for s in stage_plan(cfg.model.variant, cfg.train)],
                          cfg.train.epochs_scale, data_root, bundle.fingerprint)
    warm, skipped, warm_label = warm_trials(optuna_storage, args.warm_start, space, client, record) \
        if args.warm_start else ([], 0, "")
    if args.warm_start:
        print(f"warm start from {warm_label}: {len(warm)} finished trials added, {skipped} skipped "
              "(a param missing or a value outside this space)")
    if "://" not in storage:
        try:
            Path(storage).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SearchError(f"--storage {storage}: cannot create the folder: {e.strerror or e}") from None
    if args.resume:
        started = started_on(path, client, name)
        check_same_data(path, started, data_root, bundle.fingerprint)
        check_same_overrides(path, started, overrides)
    try:
        connect_ray(args.address)
    except ConnectError as e:
        raise SearchError(str(e)) from None
    try:  # every node alive now reads a marker the driver wrote there; each trial checks it again
        marker, checked = storage_check.check(storage, remote=args.address is not None)
    except storage_check.StorageError as e:
        raise SearchError(str(e)) from None
    print(checked)
    try:  # the backbone weights the trials load, on every node alive now; each trial checks again
        print(weights_check.check(cfg, space, remote=args.address is not None))
    except weights_check.WeightsCheckError as e:
        raise SearchError(str(e)) from None
    resources = trial_resources(space, args.address)
    local = args.address in (None, "local")  # the Ray this search starts itself: no autoscaler
    try:  # a trial that no node can ever run: refused before the parent run exists (tuning.execution.feasibility)
        feasibility.check_before_start(resources, local=local)
    except feasibility.InfeasibleError as e:
        raise SearchError(str(e)) from None
    policy = args.log_checkpoints or "best"
    parent_id = parent_run(client, name, path, space, bundle.fingerprint, args.resume, data_root, artifacts,
                           {POLICY_PARAM: policy, OVERRIDES_PARAM: describe_overrides(overrides)})
    if not args.resume:
        record_study(client, parent_id, study_uri, name)
    if args.warm_start:
        client.set_tag(parent_id, WARM_TAG, f"{warm_label}: {len(warm)} trials added, {skipped} skipped")
    store_uri = None if args.no_stage_store else storage.rstrip("/") + "/stage_store"
    # the stage store's leases live in an actor on this node, alive as long as this function runs
    leases, _lease_actor = start_lease_actor() if store_uri else (None, None)
    rungs = resolve_rungs(space, cfg) if space.scheduler.type != "fifo" else ()
    # a promotion scheduler pauses trials at its rungs: they hand Ray a checkpoint there to resume from
    setup = TrialSetup(space, data_root, seed, store_uri, storage, marker, leases,
                       checkpoint_epochs=rungs if space.scheduler.type.endswith("_promotion") else ())
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)
    if args.resume:
        print(f"resuming the search at {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
    else:
        n_total = total_epochs(cfg)
        scheduler = make_scheduler(space, n_total, rungs)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(space, args.max_concurrent or space.max_concurrent, seed, optuna_storage,
                                         name, warm, record),
                scheduler=scheduler,
                num_samples=args.num_samples or space.num_samples,
                metric=space.metric, mode=space.mode,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=storage,
                callbacks=[MlflowCallback(tracking_uri, parent_id, space, extra, policy),
                           feasibility.PendingWatch(local), *state_callbacks(scheduler)],
                failure_config=tune.FailureConfig(max_failures=2),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            ),
        )
        save_record(path, {"data_root": data_root, "data_fingerprint": bundle.fingerprint,
                           OVERRIDES_PARAM: describe_overrides(overrides)})
    try:
        results = tuner.fit()
    except feasibility.InfeasibleError as e:  # trials pending that no node can ever run
        client.set_terminated(parent_id, "FAILED")
        raise SearchError(str(e)) from None
    return finish(results, space, client, parent_id, name, args, tracking_uri)


def finish(results: Any, space: SearchSpace, client: Any, parent_id: str, name: str,
           args: argparse.Namespace, tracking_uri: str) -> int:
    from tuning.results import best_model_lines
    from tuning.tracking.champion import register
    from tuning.tracking.mlflow_runs import NOTE_TAG, log_search_summary, parent_note
    from tuning.tracking.tags import TRIAL_TAG

    # every trial's writes delivered (else a clean, resumable stop), then Optuna's plots and trials.csv
    log_search_summary(client, parent_id, results, space)
    children = client.search_runs([client.get_run(parent_id).info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=10000)
    run_ids = {r.data.tags[TRIAL_TAG]: r.info.run_id for r in children if TRIAL_TAG in r.data.tags}
    best = pick_from_front(results, space, client, parent_id, champion_rule(space, args.max_gflops, args.min_top1),
                           run_ids) if space.objectives else pick_best(results, space)
    if best is None:
        client.set_terminated(parent_id, "FAILED")
        print("no trial finished" + (" within the champion's constraints" if space.objectives else "")
              + "; see the Ray trial table above and the MLflow runs", file=sys.stderr)
        return 1
    trial_id = best.metrics["trial_id"]
    run_id = run_ids[trial_id]
    with best.checkpoint.as_directory() as d:
        ckpt = next(Path(d).glob("stage*_best.pt"))
        if client.get_run(parent_id).data.params.get(POLICY_PARAM) == "champion-only":
            client.log_artifact(run_id, str(ckpt), CHECKPOINT_DIR)  # what tuning.export reads
        uri = register(client, run_id, ckpt, args.model_name or f"egosearch-{name}")
    if space.export:  # opt-in per space: the champion exported for a device (tuning.export)
        from tuning.export import export_at_registration

        export_at_registration(client, run_id, args.data)
    exp_id = client.get_run(parent_id).info.experiment_id
    for k, v in {"best_trial_id": trial_id, "best_run_id": run_id, "champion": uri,
                 NOTE_TAG: parent_note(space, exp_id, run_id)}.items():
        client.set_tag(parent_id, k, v)
    client.log_metric(parent_id, f"best_{space.metric}", float(best.metrics[space.metric]))
    if space.evaluate_test:  # a reproduction such as table3: its table beside the paper's figures
        from tuning.report import ReportError, report

        try:
            report(client, parent_id)
        except ReportError as e:
            print(f"warning: no table: {e}", file=sys.stderr)
    client.set_terminated(parent_id, "FINISHED")
    params = decode(space, best.config)
    print("\nbest trial:", trial_id)
    for k in sorted({p.key for p in space.params} & set(params)):
        print(f"  {k} = {params[k]}")
    print(f"  {space.metric} = {best.metrics[space.metric]:.4f}\n  MLflow run id: {run_id}\n  model: {uri}")
    ui = tracking_uri if not tracking_uri.startswith("http") else None
    print("\nnext:")
    print(f"  mlflow ui --backend-store-uri {ui}" if ui else f"  open {tracking_uri} in a browser")
    print("\n".join(best_model_lines(name, tracking_uri)))
    scale = float(params.get("train.epochs_scale", 1.0))  # the search's schedule; retrain's default is the full one
    print(f"  python -m tuning.retrain --run-id {run_id} --tracking-uri {tracking_uri}"
          + (f" --data {args.data}" if args.data else "") + (f" --epochs-scale {scale:g}" if scale != 1.0 else ""))
    if space.evaluate_test:
        print(f"  python -m tuning.report --parent {parent_id} --tracking-uri {tracking_uri}")
    return 0


USER_ERRORS = (SpaceError, SearchError, StudyError, TrackingError, ConfigError, DataError, ParetoError)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda a: run(parser().parse_args(a), a), argv, USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
