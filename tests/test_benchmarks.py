"""The benchmark command runs end to end (tiny mode: it checks that each figure is produced, not its value)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEYS = ("search_cost_ratio", "stage1_cache_speedup", "step_speedup_vs_naive", "data_wait_fraction",
        "tune_overhead_ratio", "two_node_speedup")


def test_benchmarks_run_in_tiny_mode(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tiny", "--json", str(out)], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    for key in KEYS:
        assert isinstance(figures[key], float) and figures[key] > 0, key
    assert "machine" in figures and "same_best_configuration" in figures
