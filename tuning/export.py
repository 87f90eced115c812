"""``python -m tuning.export --champion | --run-id ID [--format onnx] [--out DIR] [--data PATH]``

The champion (or any trial run) exported for a device: its best checkpoint from MLflow goes through
``python -m egomodel.export`` (a streaming ONNX step, checked against the PyTorch model on real clips);
the ONNX file, its ``model.json``, the parity and latency figures and the ONNX Runtime example are
logged to the run under ``onnx/``, the figures also as metrics (``export_parity_max_abs_diff``,
``export_latency_ms_1_thread``, ...). A parity failure exits 2 with the figures and logs nothing but
``onnx_refused/parity.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

from egomodel.cli import USER_ERRORS, run_cli
from egomodel.export import ParityError, export_checkpoint
from tuning.retrain import RetrainError, champion_run
from tuning.tracking.mlflow_runs import TRACKING_HELP, TrackingError, check_reachable, tracking_uri

CHECKPOINTS = "checkpoint"  # where a trial run keeps its *_best.pt files


def best_checkpoint(client: object, run_id: str, into: Path) -> Path:
    """The run's best checkpoint of its last stage, downloaded into ``into``."""
    try:
        names = [a.path for a in client.list_artifacts(run_id, CHECKPOINTS) if a.path.endswith("_best.pt")]
    except Exception as e:
        raise RetrainError(f"run {run_id}: cannot list its artifacts: {e}") from None
    if not names:
        raise RetrainError(f"run {run_id} has no {CHECKPOINTS}/*_best.pt artifact: is it a finished trial run?")
    last = max(names, key=lambda n: int(re.findall(r"\d+", Path(n).name)[0]))
    return Path(client.download_artifacts(run_id, last, str(into)))


def export_run(client: object, run_id: str, out: Path, data: str | None = None, clips: int = 8) -> dict:
    """Export a trial run's best checkpoint into ``out`` and log it to the run (``onnx/``, metrics, tag);
    a parity failure logs ``onnx_refused/parity.json`` and raises ``ParityError``. The parity figures."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = best_checkpoint(client, run_id, Path(tmp))
        try:
            parity = export_checkpoint(checkpoint, out, data=data, clips=clips)
        except ParityError:
            client.log_artifact(run_id, str(out / "parity.json"), "onnx_refused")
            raise
    client.log_artifacts(run_id, str(out), "onnx")
    for key in ("max_abs_diff", "top1_agreement"):
        client.log_metric(run_id, f"export_parity_{key}", parity[key])
    for threads in ("1_thread", "all_threads"):
        client.log_metric(run_id, f"export_latency_ms_{threads}", 1000 * parity[f"latency_s_per_frame_{threads}"])
    client.set_tag(run_id, "egosearch.export", "onnx")
    return parity


def export_at_registration(client: object, run_id: str, data: str | None) -> None:
    """A space's ``export: onnx``: the registered champion exported into ``export-RUNID``. A model that cannot
    be streamed (flow, two-stream) or fails the parity check is a warning on a finished search, not a
    failure; its run's ``egosearch.export`` tag says why."""
    out = Path(f"export-{run_id[:8]}")
    try:
        parity = export_run(client, run_id, out, data)
    except (*USER_ERRORS, RetrainError, RuntimeError) as e:
        client.set_tag(run_id, "egosearch.export", f"refused: {e}"[:5000])
        print(f"warning: the champion was not exported: {e}", file=sys.stderr)
        return
    print(f"exported the champion: {out / 'model.onnx'} (parity max |diff| {parity['max_abs_diff']:.2g}, "
          f"{1000 * parity['latency_s_per_frame_1_thread']:.1f} ms per frame on one thread)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuning.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--champion", action="store_true", help="the registered model with the 'champion' alias")
    who.add_argument("--run-id", help="an MLflow trial run")
    p.add_argument("--model-name", default=None, help="registered model name (with --champion)")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", default=None, help="output folder (default: export-RUNID)")
    p.add_argument("--data", default=None, help="data root of the parity clips (default: the run's data.root)")
    p.add_argument("--clips", type=int, default=8, help="parity clips (default 8)")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    args = p.parse_args(argv)
    client = check_reachable(tracking_uri(args.tracking_uri))
    run_id = champion_run(client, args.model_name) if args.champion else args.run_id
    out = Path(args.out or f"export-{run_id[:8]}")
    parity = export_run(client, run_id, out, args.data, args.clips)
    print(json.dumps(parity, indent=2))
    print(f"exported: {out / 'model.onnx'} (logged to run {run_id} under onnx/)")
    print(f"try it:  python {out / 'classify_video.py'} VIDEO")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, errors=(*USER_ERRORS, RetrainError, TrackingError)))
