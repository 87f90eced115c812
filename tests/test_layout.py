"""The GTEA61 layout reader against every quirk of the real data set, and its errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from egomodel.data.layout import (
    Clip,
    DataError,
    class_names,
    fingerprint,
    list_users,
    load_gray,
    load_rgb,
    nearest_mmap,
    sample_indices,
    scan,
)
from egomodel.data.synthetic import add_quirks, generate, missing_class
from egomodel.data.synthetic_scene import plan_classes

FRAMES = 8


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic set; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("pristine") / "data"
    return generate(root, classes=4, clips_per_class=2, frames=FRAMES, size=(40, 32), users=4)


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def _png(path: Path, value: int = 0, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (4, 4, 3) if mode == "RGB" else (4, 4)
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode).save(path)


def _clip(root: Path, user: str, cls: str, inst: str, frames: int = 3, maps: tuple[int, ...] = (1, 2, 3)) -> None:
    """Write a hand-made clip of tiny frames."""
    folder = root / "processed_frames2" / user / cls / inst
    for t in range(1, frames + 1):
        _png(folder / "rgb" / f"rgb{t:04d}.png", mode="RGB")
    for t in maps:
        _png(folder / "mmaps" / f"map{t:04d}.png", 255)


def test_labels_are_by_name_over_all_users(tmp_path: Path) -> None:
    _clip(tmp_path, "S1", "close_jam", "1")
    _clip(tmp_path, "S1", "take_bread", "1")
    _clip(tmp_path, "S2", "close_jam", "1")
    _clip(tmp_path, "S2", "put_tea", "1")
    _clip(tmp_path, "S2", "take_bread", "1")
    clips = scan(tmp_path)
    names = class_names(clips)
    assert names == ["close_jam", "put_tea", "take_bread"]
    by_key = {c.key: names.index(c.label_name) for c in clips}
    # S1's second folder is take_bread: label 2, not its folder index 1.
    assert by_key["S1/take_bread/1"] == by_key["S2/take_bread/1"] == 2
    assert class_names(scan(tmp_path, ["S1"])) == ["close_jam", "take_bread"]


def test_synthetic_set_missing_class_for_s1(pristine: Path) -> None:
    clips = scan(pristine, need_mmaps=True, need_flow=True, min_frames=FRAMES)
    names = class_names(clips)
    assert names == sorted(c.name for c in plan_classes(4))
    lacking = missing_class(4, 4)
    assert lacking not in {c.label_name for c in clips if c.user == "S1"}
    assert {c.label_name for c in clips if c.user == "S2"} == set(names)
    assert len(clips) == (4 * 4 - 1) * 2
    assert all(c.num_frames == FRAMES and len(c.flow_x) == len(c.flow_y) == FRAMES for c in clips)


def test_order_is_deterministic_and_natural(tmp_path: Path) -> None:
    for inst in ("10", "2", "1"):
        _clip(tmp_path, "S10", "b", inst)
        _clip(tmp_path, "S2", "a", inst)
    keys = [c.key for c in scan(tmp_path)]
    assert keys == ["S2/a/1", "S2/a/2", "S2/a/10", "S10/b/1", "S10/b/2", "S10/b/10"]
    assert list_users(tmp_path) == ["S2", "S10"]
    assert scan(tmp_path, ["S10", "S2"]) == scan(tmp_path)


def test_quirks_are_absorbed(data: Path) -> None:
    quirks = add_quirks(data)
    clips = scan(data, need_mmaps=True, need_flow=True, min_frames=FRAMES)
    assert len(clips) == (4 * 4 - 1) * 2, "stray files are not clips"
    referenced = {p for c in clips for p in (*c.rgb, *c.mmaps.values(), *c.flow_x, *c.flow_y)}
    assert not referenced & set(quirks.duplicates + quirks.stray)
    assert all(c.num_frames == FRAMES for c in clips), "duplicates are not frames"
    assert all(" (1)" not in p.name for p in referenced)

    clip = next(c for c in clips if c.mmaps and quirks.removed_map.parent == c.folder / "mmaps")
    frame = quirks.removed_frame
    assert frame not in clip.mmaps and len(clip.mmaps) == FRAMES - 1
    assert nearest_mmap(clip, frame) == clip.mmaps[frame + 1]
    assert nearest_mmap(clip, frame + 1) == clip.mmaps[frame + 1]


def test_nearest_mmap_search_order_and_reach(tmp_path: Path) -> None:
    _clip(tmp_path, "S1", "a", "1", frames=10, maps=(1, 4, 6))
    (clip,) = scan(tmp_path, need_mmaps=True)
    folder = clip.folder / "mmaps"
    assert nearest_mmap(clip, 4) == folder / "map0004.png"
    assert nearest_mmap(clip, 5) == folder / "map0006.png", "i+1 is tried before i-1"
    assert nearest_mmap(clip, 3) == folder / "map0004.png"
    assert nearest_mmap(clip, 2) == folder / "map0001.png", "i-1 when i and i+1 are missing"
    assert nearest_mmap(clip, 10, max_reach=4) == folder / "map0006.png"
    with pytest.raises(DataError) as err:
        nearest_mmap(clip, 10, max_reach=3)
    assert str(folder) in str(err.value) and "frame 10" in str(err.value)
    with pytest.raises(DataError, match="within 5 frames"):
        nearest_mmap(Clip("S1", "a", "1", clip.rgb, {}), 1)


def test_missing_root_and_users(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as err:
        scan(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(DataError) as err:
        list_users(tmp_path)
    assert str(tmp_path / "processed_frames2") in str(err.value)
    (tmp_path / "processed_frames2" / "extra").mkdir(parents=True)
    (tmp_path / "processed_frames2" / "notes.txt").write_text("stray")
    with pytest.raises(DataError, match="no user folders") as err:
        scan(tmp_path)
    assert str(tmp_path / "processed_frames2") in str(err.value)


def test_unknown_user(data: Path) -> None:
    with pytest.raises(DataError) as err:
        scan(data, ["S2", "S9"])
    assert "S9" in str(err.value) and str(data / "processed_frames2") in str(err.value)


def test_too_few_frames(data: Path) -> None:
    with pytest.raises(DataError) as err:
        scan(data, min_frames=FRAMES + 1)
    message = str(err.value)
    assert str(data / "processed_frames2" / "S1") in message and f"{FRAMES} rgb frames" in message
    assert str(FRAMES + 1) in message


def test_gap_in_rgb_frames(data: Path) -> None:
    rgb = data / "processed_frames2" / "S3" / "shake_cup" / "2" / "rgb"
    (rgb / "rgb0004.png").unlink()
    with pytest.raises(DataError, match="missing frame 4") as err:
        scan(data)
    assert str(rgb) in str(err.value)


def test_needed_mmaps_and_flow_must_exist(data: Path) -> None:
    maps = data / "processed_frames2" / "S2" / "stir_cup" / "1" / "mmaps"
    shutil.rmtree(maps)
    assert scan(data)  # not needed: fine
    with pytest.raises(DataError) as err:
        scan(data, need_mmaps=True)
    assert str(maps.parent) in str(err.value)

    flow = data / "flow_y_processed" / "S4" / "shake_cup" / "2"
    shutil.rmtree(flow)
    clips = scan(data, ["S4"])
    assert next(c for c in clips if c.key == "S4/shake_cup/2").flow_y == ()
    with pytest.raises(DataError) as err:
        scan(data, ["S4"], need_flow=True)
    assert str(flow) in str(err.value)


def test_corrupt_image(data: Path) -> None:
    (clip,) = [c for c in scan(data, ["S1"]) if c.key == "S1/shake_cup/1"]
    assert load_rgb(clip.rgb[0]).mode == "RGB"
    gray = load_gray(clip.mmaps[1])
    assert gray.dtype == np.uint8 and gray.shape == (32, 40) and set(np.unique(gray)) <= {0, 255}

    clip.rgb[1].write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="cannot read image") as err:
        load_rgb(clip.rgb[1])
    assert str(clip.rgb[1]) in str(err.value)

    truncated = clip.mmaps[2].read_bytes()
    clip.mmaps[2].write_bytes(truncated[: len(truncated) // 2])
    with pytest.raises(DataError) as err:
        load_gray(clip.mmaps[2])
    assert str(clip.mmaps[2]) in str(err.value)

    with pytest.raises(DataError) as err:
        load_gray(clip.folder / "absent.png")
    assert str(clip.folder / "absent.png") in str(err.value)


def test_sample_indices_by_hand() -> None:
    # linspace(1, 10, 7, endpoint=False) = 1 + k * 9/7 = 1, 2.29, 3.57, 4.86, 6.14, 7.43, 8.71
    assert sample_indices(10, 7) == [0, 1, 2, 3, 5, 6, 7]
    # linspace(1, 7, 7, endpoint=False) = 1 + k * 6/7 = 1, 1.86, 2.71, 3.57, 4.43, 5.29, 6.14
    assert sample_indices(7, 7) == [0, 0, 1, 2, 3, 4, 5]
    # linspace(1, 12, 3, endpoint=False) = 1, 4.67, 8.33
    assert sample_indices(12, 3) == [0, 3, 7]
    with pytest.raises(DataError, match="5 frames, fewer than the 7"):
        sample_indices(5, 7)


def test_fingerprint(data: Path, tmp_path: Path) -> None:
    first = fingerprint(data, scan(data))
    assert len(first) == 16 and first == fingerprint(data, list(reversed(scan(data))))
    moved = Path(shutil.copytree(data, tmp_path / "elsewhere"))
    assert fingerprint(moved, scan(moved)) == first, "independent of where the set lives"

    flow = scan(data)[0].flow_x[-1]
    flow.write_bytes(flow.read_bytes() + b"\0")
    resized = fingerprint(data, scan(data))
    assert resized != first

    (data / "processed_frames2" / "S2" / "shake_cup" / "1" / "mmaps" / "map0005.png").unlink()
    removed = fingerprint(data, scan(data))
    assert removed not in (first, resized)


def test_clip_is_hashable_and_keyed(pristine: Path) -> None:
    clips = scan(pristine, ["S2"])
    assert len(set(clips)) == len(clips)
    assert clips[0].key == f"S2/{clips[0].label_name}/1"
    assert clips[0].folder == pristine / "processed_frames2" / "S2" / clips[0].label_name / "1"
