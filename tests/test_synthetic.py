"""The synthetic data set: layout, determinism, exact motion maps and flow, CLI and cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from egomodel.data import synthetic
from egomodel.data.synthetic import MARKER, add_quirks, default_root, generate
from egomodel.data.synthetic_scene import CLASS_ORDER, FLOW_SCALE, plan_classes

SMALL = {"classes": 4, "clips_per_class": 2, "frames": 6, "size": (64, 48), "seed": 0, "users": 4}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic set shared (read-only) by the tests of this module."""
    return generate(tmp_path_factory.mktemp("syn") / "data", **SMALL)


def _clip_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("processed_frames2/S*/*/*"))


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_has_exact_file_names(small: Path) -> None:
    names = [c.name for c in plan_classes(4)]
    missing = synthetic.missing_class(4, 4)
    assert missing == names[-1]
    assert sorted(p.name for p in (small / "processed_frames2").iterdir()) == ["S1", "S2", "S3", "S4"]
    for user in ("S1", "S2", "S3", "S4"):
        expected = sorted(n for n in names if not (user == "S1" and n == missing))
        assert sorted(p.name for p in (small / "processed_frames2" / user).iterdir()) == expected
        for name in expected:
            rel = Path(user, name)
            assert sorted(p.name for p in (small / "processed_frames2" / rel).iterdir()) == ["1", "2"]
            clip = small / "processed_frames2" / rel / "1"
            assert sorted(p.name for p in clip.iterdir()) == ["mmaps", "rgb"]
            assert sorted(p.name for p in (clip / "rgb").iterdir()) == [f"rgb{t:04d}.png" for t in range(1, 7)]
            assert sorted(p.name for p in (clip / "mmaps").iterdir()) == [f"map{t:04d}.png" for t in range(1, 7)]
            for axis in ("x", "y"):
                flow = small / f"flow_{axis}_processed" / rel / "1"
                assert sorted(p.name for p in flow.iterdir()) == [f"flow_{axis}_{t:05d}.png" for t in range(1, 7)]
    clip = small / "processed_frames2" / "S2" / names[0] / "1"
    with Image.open(clip / "rgb" / "rgb0001.png") as im:
        assert (im.mode, im.size) == ("RGB", (64, 48))
    with Image.open(clip / "mmaps" / "map0001.png") as im:
        assert (im.mode, im.size) == ("L", (64, 48))
    assert set(np.unique(_gray(clip / "mmaps" / "map0001.png"))) == {0, 255}
    with Image.open(small / "flow_x_processed" / "S2" / names[0] / "1" / "flow_x_00001.png") as im:
        assert (im.mode, im.size) == ("L", (64, 48))


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    args = {"classes": 3, "clips_per_class": 1, "frames": 3, "size": (40, 32), "users": 2}
    a = _all_bytes(generate(tmp_path / "a", seed=5, **args))
    b = _all_bytes(generate(tmp_path / "b", seed=5, **args))
    c = _all_bytes(generate(tmp_path / "c", seed=6, **args))
    assert a == b
    assert a.keys() == c.keys()
    assert any(a[k] != c[k] for k in a)


def test_clip_does_not_depend_on_number_of_classes(tmp_path: Path) -> None:
    args = {"clips_per_class": 1, "frames": 3, "size": (40, 32), "users": 2, "seed": 1}
    a = _all_bytes(generate(tmp_path / "a", classes=2, **args))
    b = _all_bytes(generate(tmp_path / "b", classes=5, **args))
    assert all(b[k] == v for k, v in a.items())


def _motion(clip: Path, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Map (bool), flow x and y as signed displacements in pixels, RGB frame t (1-based)."""
    parts = clip.parts[-3:]
    root = clip.parents[3]
    mask = _gray(clip / "mmaps" / f"map{t:04d}.png") == 255
    fx = (_gray(root.joinpath("flow_x_processed", *parts, f"flow_x_{t:05d}.png")).astype(int) - 128) / FLOW_SCALE
    fy = (_gray(root.joinpath("flow_y_processed", *parts, f"flow_y_{t:05d}.png")).astype(int) - 128) / FLOW_SCALE
    rgb = np.asarray(Image.open(clip / "rgb" / f"rgb{t:04d}.png"))
    return mask, fx, fy, rgb


def test_maps_and_flow_describe_the_motion_exactly(small: Path) -> None:
    """Definition: map t is the set of pixels of frame t that move to frame t+1 (the object's pixels);
    flow t on them is their integer displacement d, each moved pixel keeps its colour at p + d, and
    every pixel outside the object in frames t and t+1 is unchanged."""
    for clip in _clip_dirs(small):
        for t in range(1, 6):
            mask, fx, fy, rgb = _motion(clip, t)
            next_mask, _, _, next_rgb = _motion(clip, t + 1)
            assert mask.any()
            assert np.array_equal((fx != 0) | (fy != 0), mask), clip
            dx, dy = np.unique(fx[mask]), np.unique(fy[mask])
            assert len(dx) == len(dy) == 1, "rigid motion: one displacement per frame"
            dx, dy = int(dx[0]), int(dy[0])
            assert (dx, dy) != (0, 0)
            ys, xs = np.nonzero(mask)
            assert np.array_equal(next_rgb[ys + dy, xs + dx], rgb[ys, xs])
            shifted = np.zeros_like(mask)
            shifted[ys + dy, xs + dx] = True
            assert np.array_equal(shifted, next_mask)
            static = ~(mask | next_mask)
            assert np.array_equal(rgb[static], next_rgb[static])


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize(("motion", "moving_axis"), [("slide", 0), ("shake", 1)])
def test_flow_sign_matches_direction(small: Path, motion: str, moving_axis: int) -> None:
    clips = [c for c in _clip_dirs(small) if c.parent.name.startswith(motion + "_")]
    assert clips
    for clip in clips:
        for t in range(1, 6):
            mask, fx, fy, _ = _motion(clip, t)
            step = _centroid(_motion(clip, t + 1)[0]) - _centroid(mask)
            flows = (fx, fy)
            assert not flows[1 - moving_axis].any(), "no motion along the other axis"
            value = flows[moving_axis][mask]
            assert np.all(np.sign(value) == np.sign(step[moving_axis])) and step[moving_axis] != 0
            assert np.allclose(value, step[moving_axis])


def test_stir_moves_along_both_axes(small: Path) -> None:
    for clip in (c for c in _clip_dirs(small) if c.parent.name.startswith("stir_")):
        steps = [(_motion(clip, t)[1].any(), _motion(clip, t)[2].any()) for t in range(1, 6)]
        assert any(x for x, _ in steps) and any(y for _, y in steps)


def test_classes_include_motion_only_pairs() -> None:
    assert [c.name for c in plan_classes(2)] == ["shake_cup", "stir_cup"]
    for n in range(2, len(CLASS_ORDER) + 1):
        plan = plan_classes(n)
        assert len({c.name for c in plan}) == n
        assert any(a.obj == b.obj and a.motion != b.motion for a in plan for b in plan)
    four = plan_classes(4)
    assert any(a.motion == b.motion and a.obj != b.obj for a in four for b in four)
    for bad in (1, len(CLASS_ORDER) + 1):
        with pytest.raises(ValueError, match="number of classes"):
            plan_classes(bad)


def test_users_have_different_backgrounds(small: Path) -> None:
    name = plan_classes(4)[0].name
    means = []
    for user in ("S1", "S2", "S3", "S4"):
        mask, _, _, rgb = _motion(small / "processed_frames2" / user / name / "1", 1)
        means.append(rgb[~mask].reshape(-1, 3).mean(axis=0))
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(means[i] - means[j]).max() > 10


def test_add_quirks(tmp_path: Path) -> None:
    root = generate(tmp_path / "data", classes=3, clips_per_class=1, frames=5, size=(40, 32), users=2)
    quirks = add_quirks(root)
    assert all(p.is_file() for p in quirks.stray + quirks.duplicates)
    assert any(p.parent == root / "processed_frames2" for p in quirks.stray)
    assert quirks.duplicates[0].name == "rgb0003 (1).png"
    assert quirks.removed_frame == 3 and not quirks.removed_map.exists()
    assert quirks.removed_map.with_name("map0001.png").exists()


def test_main_writes_a_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = [str(out), "--classes", "3", "--clips-per-class", "1", "--frames", "3", "--size", "48x40", "--seed", "2"]
    assert synthetic.main(argv) == 0
    assert "S1 lacks slide_box" in capsys.readouterr().out
    with Image.open(out / "processed_frames2" / "S2" / "slide_box" / "1" / "rgb" / "rgb0003.png") as im:
        assert im.size == (48, 40)
    assert not (out / "processed_frames2" / "S1" / "slide_box").exists()
    assert synthetic.main(argv) == 2, "refuses a non-empty output folder"
    assert synthetic.main([str(tmp_path / "x"), "--classes", "40"]) == 2
    with pytest.raises(SystemExit):
        synthetic.main([str(tmp_path / "y"), "--size", "big"])


def test_module_runs_as_script(tmp_path: Path) -> None:
    out = tmp_path / "script"
    args = [str(out), "--classes", "2", "--clips-per-class", "1", "--frames", "2", "--size", "32x32", "--users", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "egomodel.data.synthetic", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "flow_y_processed" / "S1" / "stir_cup" / "1" / "flow_y_00002.png").is_file()


def test_default_root_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"classes": 2, "clips_per_class": 1, "frames": 2, "size": (32, 32), "users": 1}
    root = default_root(tmp_path, **params)
    assert (root / MARKER).is_file() and root.parent == tmp_path and root.name.startswith("synthetic-")
    assert [p.name for p in tmp_path.iterdir()] == [root.name], "no temporary folder left behind"

    def fail(*args: object, **kwargs: object) -> Path:
        raise AssertionError("regenerated a complete set")

    monkeypatch.setattr(synthetic, "generate", fail)
    assert default_root(tmp_path, **params) == root
    monkeypatch.undo()

    (root / MARKER).unlink()  # as if interrupted before the marker was written
    assert default_root(tmp_path, **params) == root
    assert (root / MARKER).is_file()

    monkeypatch.setenv("EGOMODEL_CACHE", str(tmp_path / "env"))
    assert default_root(**params).parent == tmp_path / "env"
    assert default_root(tmp_path, **{**params, "seed": 1}) != root
