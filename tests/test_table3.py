"""Table 3 as one search: a tiny ``table3`` run on CPU (synthetic data, one seed, a few epochs)
produces the table with the paper's 8 rows, printed and logged to MLflow as CSV and PNG."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TEST_BACKBONE, client_of, env, search_cmd
from tuning.report import PAPER, main
from tuning.space import SPACES_DIR, load_space

TINY_BASE = {
    "model.pretrained": "none", "model.hidden": 16, "data.image_size": 64, "data.frames": 3,
    "data.num_workers": 0, "data.flow_stack": 3, "data.flow_segments": 2, "train.epochs_scale": 0.005,
    "train.eval_batch_size": 32, **TEST_BACKBONE,
}


def test_table3_space_holds_every_row_with_three_seeds():
    space = load_space("table3")
    assert space.evaluate_test and space.scheduler.type == "fifo"
    rows = {}
    for p in space.points:
        variant = p["model.variant"]
        key = (variant, p.get("model.ms_task") if variant in ("ms", "feedback") else None)
        rows.setdefault(key, set()).add(p["train.seed"])
    assert set(rows) == set(PAPER) and all(len(seeds) >= 3 for seeds in rows.values())
    assert space.num_samples == len(space.points)
    # seed-major: the first 8 points are the 8 rows, so --num-samples 8 runs each row once
    assert len({(p["model.variant"], p.get("model.ms_task")) for p in space.points[:8]}) == 8


def test_the_report_reads_a_searchs_runs_into_the_papers_rows(tmp_path, capsys):
    """``tuning.report --parent`` on hand-made runs (the default run's test; the whole search is slow):
    finished runs with a test score become rows in the paper's order, mean and std over seeds, a
    configuration the paper lacks after them; a failed run, or one without a test score, is left out."""
    client = client_of(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = client.create_experiment("table3")
    parent = client.create_run(exp).info.run_id
    runs = [({"model.variant": "feedback", "model.ms_task": "classification"}, 0.60, "FINISHED"),
            ({"model.variant": "feedback", "model.ms_task": "classification"}, 0.70, "FINISHED"),
            ({"model.variant": "convlstm", "model.ms_task": "classification"}, 0.50, "FINISHED"),
            ({"model.variant": "attention"}, 0.55, "FAILED"),
            ({"model.variant": "ms", "model.ms_task": "regression_l1"}, None, "FINISHED"),
            ({"model.variant": "newvariant"}, 0.20, "FINISHED")]
    for params, score, status in runs:
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
        for k, v in params.items():
            client.log_param(run, k, v)
        if score is not None:
            client.log_metric(run, "test_top1", score)
        client.set_terminated(run, status)
    assert main(["--parent", parent, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert [ln.split("  ")[0] for ln in out.splitlines()[1:]] == ["ConvLSTM", "Our Variation", "newvariant"]
    local = Path(client.download_artifacts(parent, "report", str(tmp_path / "dl")))
    with open(local / "table3.csv") as f:
        rows = {r["configuration"]: r for r in csv.DictReader(f)}
    ours = rows["Our Variation"]
    assert (ours["n"], float(ours["test_top1_mean"]), float(ours["paper_top1"])) == ("2", pytest.approx(65.0), 65.09)
    assert float(ours["test_top1_std"]) == pytest.approx(7.071, abs=1e-3)  # over the seeds (ddof 1)
    assert rows["ConvLSTM"]["n"] == "1" and rows["newvariant"]["paper_top1"] == "nan"
    assert (local / "table3.png").stat().st_size > 1000
    assert main(["--parent", "nope", "--tracking-uri", uri]) == 2
    empty = client.create_run(exp).info.run_id
    assert main(["--parent", empty, "--tracking-uri", uri]) == 2
    assert "evaluate_test: true" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_tiny_table3_search_reports_eight_rows(tmp_path, tiny_root):
    space = yaml.safe_load((SPACES_DIR / "table3.yaml").read_text())
    space["base"].update(TINY_BASE)
    space["resources"] = {"cpu": 1, "gpu": 0}
    space["plots"] = False  # a reproduction needs the table, not each trial's pictures
    path = tmp_path / "table3.yaml"
    path.write_text(yaml.safe_dump(space))
    proc = subprocess.run(search_cmd(path, tiny_root, "--num-samples", "8", "--max-concurrent", "2"), cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for name, figure in PAPER.values():  # every row printed beside the paper's figure
        line = next((ln for ln in out.splitlines() if ln.startswith(name + " ")), None)
        assert line is not None and f"{figure:.2f}" in line and " 1 " in line, (name, out[-2000:])
    assert "python -m tuning.report --parent" in out
    assert "two_stream: flow stream from the stage store" in out + proc.stderr

    client = client_of(tmp_path)
    exp = client.get_experiment_by_name("table3")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` IS NULL")
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 8 and all("test_top1" in c.data.metrics for c in children)
    two = next(c for c in children if c.data.params["model.variant"] == "two_stream")
    assert two.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(two.info.run_id)}
    assert {"confusion_test.png", "per_class_test.csv", "confusion_val.png"} <= logged, logged
    assert "plots" not in logged  # the space's plots: false
    local = Path(client.download_artifacts(parent.info.run_id, "report", str(tmp_path / "dl")))
    with open(local / "table3.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["configuration"] for r in rows] == [name for name, _ in PAPER.values()]
    assert all(r["n"] == "1" and 0 <= float(r["test_top1_mean"]) <= 100 for r in rows)
    assert (local / "table3.png").stat().st_size > 1000

    # the report again, by hand: same table; a run that is not a parent is a clear error
    again = subprocess.run([sys.executable, "-m", "tuning.report", "--parent", parent.info.run_id, "--tracking-uri",
                            f"sqlite:///{tmp_path / 'mlflow.db'}"], cwd=tmp_path, env=env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "Two-joint Stream" in again.stdout
    assert main(["--parent", "nope", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
