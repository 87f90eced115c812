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


@pytest.mark.slow
def test_device_benchmark_runs_in_tiny_mode(tmp_path):
    """``benchmarks.device`` (the GPU figures in the README) runs on this machine's CPU too, compile and the
    short training from clips held on the device included. The model is compiled with ``aot_eager``: traced
    by Dynamo and differentiated by AOT Autograd as with inductor, without inductor's C++ kernels (on a
    fresh machine those took 32 of the test's 65 s alone, with nothing else running)."""
    out = tmp_path / "device.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.device", "--tiny", "--backbone", "resnet18", "--skip",
                           "data", "trial", "--compile-backend", "aot_eager", "--json", str(out)],
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


def test_trial_extrapolation_by_hand():
    """The full schedule from measured epochs: a stage's fixed cost, its first epoch, then every later epoch
    at the median of the later measured ones; stage 1 divided among the trials sharing it."""
    from benchmarks.trial import extrapolate

    stages = {1: {"fixed_s": 0.0, "epoch_s": [10.0, 4.0, 6.0], "val_s": [2.0, 1.0, 1.0]},
              2: {"fixed_s": 3.0, "epoch_s": [8.0], "val_s": [2.0]},
              3: {"fixed_s": 1.0, "epoch_s": [20.0, 12.0], "val_s": [1.0, 1.0]}}
    out = extrapolate(stages, {1: 300, 2: 150, 3: 200}, {1: 64}, setup_s=5.0, finish_s=2.0)
    # 0 + 10 + 299 x 5; 3 + 8 + 149 x 8; 1 + 20 + 199 x 12
    assert out["stage_full_s"] == {"1": 1505.0, "2": 1203.0, "3": 2409.0}
    trial = 5 + 2 + 1505 / 64 + 1203 + 2409
    assert out["full_trial_s"] == pytest.approx(trial)
    assert out["trials_per_gpu_hour"] == pytest.approx(3600 / trial)
    # validation: 2 + 299 x 1 shared by 64, 2 + 149 x 2, 1 + 199 x 1
    assert out["val_share_full"] == pytest.approx((301 / 64 + 300 + 200) / trial)
    assert out["steady_epoch_s"] == {"1": 5.0, "2": 8.0, "3": 12.0}
    assert out["steady_from_first_epoch"] is True  # stage 2 measured one epoch
    assert out["schedule"] == {"1": 300, "2": 150, "3": 200} and out["stage1_shared_by"] == 64
    with pytest.raises(ValueError, match=r"measured stages \[1, 2, 3\] differ"):
        extrapolate(stages, {1: 300, 2: 150}, {}, 0.0, 0.0)
    with pytest.raises(ValueError, match="stage 2"):
        extrapolate({**stages, 2: {"fixed_s": 0.0, "epoch_s": [1.0], "val_s": []}}, {1: 1, 2: 1, 3: 1}, {}, 0, 0)


def test_trial_set_written_by_two_processes(tmp_path):
    """The trial's synthetic set from two spawned processes: every clip once, numbered 1..n per class, the
    second process's clips drawn with a seed of their own (not copies of the first's)."""
    from benchmarks.trial import TrialShape, generate_set
    from egomodel.data.layout import scan

    shape = TrialShape(classes=3, clips_per_class=3, width=40, height=32, image_size=32, frames=3)
    root = generate_set(tmp_path / "data", shape, clip_frames=3, processes=2)
    clips = scan(root, need_mmaps=True, need_flow=True, min_frames=3)
    assert len(clips) == shape.clips() == 3 * 3 * 4 - 3  # S1 lacks one class
    numbers: dict[tuple[str, str], list[str]] = {}
    for c in clips:
        numbers.setdefault((c.user, c.label_name), []).append(c.instance)
    assert all(sorted(v) == ["1", "2", "3"] for v in numbers.values()), numbers
    # clips 1 and 2 from the first process (seed 0), clip 3 from the second (seed 1)
    frame = {c.instance: c.rgb[0].read_bytes() for c in clips if (c.user, c.label_name) == ("S2", clips[-1].label_name)}
    assert frame["3"] != frame["1"] and frame["3"] != frame["2"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["part0"]  # the parts merged into one set


def test_device_trial_section_runs_on_cpu(tmp_path):
    """``benchmarks.device --only trial`` on this CPU at the tiny shape, one epoch per stage: every stage's
    figures, stage times that add up to the trial's, and trials per GPU-hour from the ablation schedule."""
    import time

    from benchmarks import device

    with pytest.raises(SystemExit):  # bad input: refused before any work
        device.main(["--only", "trial", "--trial-epochs", "0", "--json", str(tmp_path / "no.json")])
    assert not (tmp_path / "no.json").exists()
    out = tmp_path / "trial.json"
    t0 = time.perf_counter()
    assert device.main(["--tiny", "--backbone", "resnet18", "--device", "cpu", "--only", "trial",
                        "--json", str(out)]) == 0
    wall = time.perf_counter() - t0
    figures = json.loads(out.read_text())
    assert not [k for k in figures if k.endswith("_error")], figures
    assert "step_s" not in figures and "ours_step_s" not in figures  # --only: the other sections did not run
    trial = figures["trial"]
    assert "CPU" in trial["device"] and trial["shape"] == "tiny" and trial["epochs_per_stage"] == 1
    assert set(trial["stages"]) == {"1", "2", "3"}
    for n, batch in (("1", 32), ("2", 32), ("3", 4)):  # the ablation space's batch sizes
        s = trial["stages"][n]
        assert s["epochs"] == 1 and s["batch_size"] == batch and s["steps_per_epoch"] >= 1, n
        assert s["seconds"] == pytest.approx(s["fixed_s"] + sum(s["epoch_s"])) and s["fixed_s"] >= 0, n
        assert 0 < s["train_s"][0] < s["epoch_s"][0] and 0 < s["val_s"][0] < s["epoch_s"][0], n
        assert s["step_s"] == pytest.approx(s["train_s"][0] / s["steps_per_epoch"]), n
        assert 0 <= s["data_wait_fraction"] < 1 and 0 < s["val_share"] < 1, n
        assert s["gpu_util"] is None and s["peak_mem_kind"] == "process_peak_rss" and s["peak_mem_gb"] > 0, n
        assert s["loader"] == "DataLoader", n
    parts = trial["setup_s"] + sum(s["seconds"] for s in trial["stages"].values()) + trial["finish_s"]
    assert parts == pytest.approx(trial["trial_s"])
    assert trial["setup_s"] > 0 and trial["finish_s"] >= trial["finish_val_s"] > 0
    assert trial["trial_s"] < wall
    full = trial["full"]
    assert full["schedule"] == {"1": 300, "2": 150, "3": 200} and full["stage1_shared_by"] == 64
    assert full["steady_from_first_epoch"] is True
    assert figures["trials_per_gpu_hour"] == pytest.approx(3600 / full["full_trial_s"])
    assert trial["gpu_util_source"].startswith("none")


@pytest.mark.parametrize("command", ["search_quality", "device", "run"])
def test_a_figures_file_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, command):
    """``--json`` in a folder that cannot be made exits 2 naming it before the benchmark starts (the
    search-quality replay used to fail on it after half an hour); a missing folder is made first."""
    import importlib

    module = importlib.import_module(f"benchmarks.{command}")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as e:
        module.main(["--json", str(blocker / "results" / "figures.json")])
    assert e.value.code == 2 and "cannot create its folder" in capsys.readouterr().err


def test_the_search_quality_figures_folder_is_made_before_the_replay(tmp_path, monkeypatch):
    from benchmarks import search_quality

    class Started(Exception):
        pass

    def measure(*args, **kwargs):
        raise Started

    monkeypatch.setattr(search_quality, "measure", measure)
    with pytest.raises(Started):
        search_quality.main(["--json", str(tmp_path / "new" / "figures.json"), "--table", str(tmp_path / "t.json")])
    assert (tmp_path / "new").is_dir()


@pytest.mark.parametrize("flag", ["--searches", "--jobs"])
def test_the_search_quality_counts_must_be_positive(tmp_path, capsys, flag):
    from benchmarks import search_quality

    with pytest.raises(SystemExit) as e:
        search_quality.main(["--json", str(tmp_path / "f.json"), flag, "0"])
    assert e.value.code == 2 and f"{flag} must be at least 1, got 0" in capsys.readouterr().err
