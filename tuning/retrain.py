"""``python -m tuning.retrain --champion | --run-id ID [--seeds 3] [--data PATH] [--tracking-uri URI]``

Re-trains a chosen trial's configuration on train+val users (no hold-out: each stage keeps its last
epoch, i.e. the whole schedule), once per seed, evaluates each once on the test users, and logs a
final MLflow run with every seed's test top-1 and their mean and standard deviation.

The schedule is the full one (``train.epochs_scale`` 1.0) whatever scale the search ran at, unless
``--epochs-scale`` says otherwise; the run records which (param ``train.epochs_scale``, the search's
as ``search_epochs_scale``, tag ``epochs_scale_from``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from egomodel.config import Config, ConfigError, from_dict, known_keys
from egomodel.data.layout import DataError
from egomodel.training.engine import train
from tuning.tracking.champion import ALIAS
from tuning.tracking.mlflow_runs import TRACKING_HELP, TrackingError, check_reachable, tracking_uri


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
        names = [m.name for m in client.search_registered_models() if ALIAS in (m.aliases or {})]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuning.retrain", description=__doc__)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--champion", action="store_true", help="the registered model with the 'champion' alias")
    who.add_argument("--run-id", help="an MLflow trial run to re-train")
    p.add_argument("--model-name", default=None, help="registered model name (with --champion)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--data", default=None, help="data root (default: the run's data.root)")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    p.add_argument("--epochs-scale", type=float, default=None,
                   help="scale every stage's epochs (default 1.0: the full schedule, whatever the search ran at)")
    p.add_argument("--out", default="retrain", help="output folder (one subfolder per seed)")
    args = p.parse_args(argv)
    try:
        return run(args)
    except (RetrainError, TrackingError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise RetrainError(f"--seeds must be >= 1, got {args.seeds}")
    args.tracking_uri = tracking_uri(args.tracking_uri)
    client = check_reachable(args.tracking_uri)
    run_id = champion_run(client, args.model_name) if args.champion else args.run_id
    try:
        source = client.get_run(run_id)
    except Exception as e:
        raise RetrainError(f"run {run_id} not found at {args.tracking_uri}: {e}") from None
    cfg = config_from_params(source.data.params)
    overrides: dict[str, Any] = {"data.val_fraction": 0.0, "data.val_users": []}
    if args.data:
        overrides["data.root"] = args.data
    scale, scale_from, searched = schedule(args.epochs_scale, source.data.params)
    overrides["train.epochs_scale"] = scale
    print(f"schedule: train.epochs_scale {scale} ({scale_from}; the search ran at {searched})")
    results = []
    out = Path(args.out) / run_id
    for i in range(args.seeds):
        seed = cfg.train.seed + i
        seeded = from_dict(cfg.to_dict(), {**overrides, "train.seed": seed})
        print(f"seed {seed} ({i + 1}/{args.seeds})")
        metrics = train(seeded, out / f"seed{seed}")
        results.append((seed, metrics))
    tops = np.array([m["test_top1"] for _, m in results])
    final = client.create_run(source.info.experiment_id, run_name=f"retrain-{source.info.run_name}",
                              tags={"retrain_of": run_id, "kind": "retrain", "epochs_scale_from": scale_from})
    rid = final.info.run_id
    for k, v in source.data.params.items():
        if k not in ("train.seed", "train.epochs_scale"):
            client.log_param(rid, k, v)
    client.log_param(rid, "train.epochs_scale", scale)
    client.log_param(rid, "search_epochs_scale", searched)
    client.log_param(rid, "seeds", json.dumps([s for s, _ in results]))
    for i, (seed, m) in enumerate(results):
        client.log_metric(rid, "test_top1", m["test_top1"], step=i)
        client.log_metric(rid, f"test_top1_seed{seed}", m["test_top1"])
        client.log_artifact(rid, str(out / f"seed{seed}" / "confusion_test.png"), f"seed{seed}")
        client.log_artifact(rid, str(out / f"seed{seed}" / "metrics.json"), f"seed{seed}")
    client.log_metric(rid, "test_top1_mean", float(tops.mean()))
    client.log_metric(rid, "test_top1_std", float(tops.std(ddof=1)) if len(tops) > 1 else 0.0)
    client.set_terminated(rid, "FINISHED")
    std = tops.std(ddof=1) if len(tops) > 1 else 0.0
    print(f"test top-1 over {len(tops)} seed(s): {tops.mean():.4f} ± {std:.4f}  (MLflow run {rid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
