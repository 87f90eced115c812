"""The benchmark command runs end to end (tiny mode: it checks that each figure is produced, not its value)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KEYS = ("search_cost_ratio", "stage1_cache_speedup", "step_speedup_vs_naive", "data_wait_fraction",
        "tune_overhead_ratio", "two_node_speedup")


def test_benchmarks_run_in_tiny_mode(tmp_path, smoke_search, tiny_root):
    """The step and stage-1 cache figures run end to end; the search-cost and Tune-overhead figures are
    computed by the benchmark's own code from the session's smoke search (its four searches of their
    own run in the slow test below) and one direct training run, as the benchmark runs it."""
    from benchmarks.run import cost_figures, direct_train, overhead_figures, trial_rows, trial_seconds

    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tiny", "--skip", "search", "overhead", "nodes",
                           "--json", str(out)], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    rows = trial_rows(smoke_search.exp_dir)
    figures.update(cost_figures((rows, 2.0), (rows, 1.0)))
    assert figures["search_cost_ratio"] == 1 and figures["search_wall_ratio"] == 2  # the same search twice
    assert figures["stage_epochs_with_store"] > 0 and figures["same_best_configuration"] is True
    tuned = trial_seconds(rows)
    assert tuned and all(t > 0 for t in tuned)
    figures.update(overhead_figures(tuned, tuned, [direct_train(tiny_root, tmp_path / "direct")]))
    for key in KEYS[:-1]:
        assert isinstance(figures[key], float) and figures[key] > 0, key
    assert "machine" in figures


@pytest.mark.slow
def test_benchmark_searches_run_in_tiny_mode(tmp_path):
    """The search-cost and Tune-overhead benchmarks with their own four searches."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tiny", "--skip", "step", "cache", "nodes",
                           "--json", str(out)], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    for key in ("search_cost_ratio", "data_wait_fraction", "tune_overhead_ratio"):
        assert isinstance(figures[key], float) and figures[key] > 0, key
    assert "same_best_configuration" in figures


@pytest.mark.slow
def test_two_node_benchmark_runs(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tiny", "--skip", "step", "cache", "search",
                           "overhead", "--json", str(out)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert json.loads(out.read_text())["two_node_speedup"] > 0


def test_device_benchmark_runs_in_tiny_mode(tmp_path):
    """``benchmarks.device`` (the GPU figures in the README) runs on this machine's CPU too, compile and the
    short training from clips held on the device included. The model is compiled with ``aot_eager``: traced
    by Dynamo and differentiated by AOT Autograd as with inductor, without inductor's C++ kernels (on a
    fresh machine those took 32 of the test's 65 s alone, with nothing else running)."""
    out = tmp_path / "device.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.device", "--tiny", "--backbone", "resnet18", "--skip",
                           "data", "--compile-backend", "aot_eager", "--json", str(out)],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert not [k for k in figures if k.endswith("_error")], figures
    for key in ("step_speedup_vs_naive", "ours_clips_per_s", "stage3_step_s", "convlstm_fused_speedup",
                "compiled_step_s", "device_clips_training_s"):
        assert isinstance(figures[key], float) and figures[key] > 0, key
    assert figures["ours_gates"] == "separate"  # what "auto" picks on a CPU
    assert figures["compile_backend"] == "aot_eager"
    assert figures["backbone"] == "resnet18"  # the half-size one here: the same code, compiled in half the time
    assert 0 <= figures["device_clips_training_data_wait_fraction"] < 1
