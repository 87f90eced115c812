"""``egomodel.prepare egtea`` and ``epic`` on tiny trees written in the data sets' documented layouts."""

from __future__ import annotations

import csv
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from egomodel.data import layout
from egomodel.data.synthetic_ego import write_video
from egomodel.prepare import main as prepare

RNG = np.random.default_rng(0)


def _frames(n: int, size: tuple[int, int] = (64, 48)) -> list[np.ndarray]:
    """A textured picture panning 3 px per frame."""
    width, height = size
    world = RNG.integers(0, 255, (height, width + 3 * n, 3), dtype=np.uint8)
    return [np.ascontiguousarray(world[:, 3 * t : 3 * t + width]) for t in range(n)]


def _egtea(root: Path) -> Path:
    clips = {"OP01-R01-PastaSalad-1000-2000-F000030-F000035": 5, "OP01-R01-PastaSalad-3000-4000-F000090-F000097": 8,
             "P03-R02-Pizza-500-900-F000012-F000017": 6}
    for name, n in clips.items():
        folder = root / "cropped_clips" / name.rsplit("-", 4)[0]
        folder.mkdir(parents=True, exist_ok=True)
        write_video(folder / f"{name}.mp4", _frames(n))
    (root / "action_annotation").mkdir()
    (root / "action_annotation" / "action_idx.txt").write_text("Open fridge 1\nInspect/Read recipe 2\n")
    names = list(clips)
    (root / "action_annotation" / "train_split1.txt").write_text(f"{names[0]} 1 1 1\n{names[1]} 1 1 1\n")
    (root / "action_annotation" / "test_split1.txt").write_text(f"{names[2]} 2 3 4\n")
    return root


def test_egtea_split_becomes_users_train_and_test(tmp_path: Path, capsys) -> None:
    root = _egtea(tmp_path / "EGTEA")
    out = tmp_path / "out"
    assert prepare(["egtea", str(root), "--split", "1", "--out", str(out), "--flow", "dis", "--short-side", "32",
                    "--no-progress"]) == 0
    clips = {c.key: c for c in layout.scan(out, need_mmaps=True, need_flow=True)}
    assert sorted(clips) == ["test/Inspect_Read_recipe/1", "train/Open_fridge/1", "train/Open_fridge/2"]
    assert [clips[k].num_frames for k in sorted(clips)] == [6, 5, 8]  # each clip file is a whole clip
    assert len(clips["train/Open_fridge/2"].flow_x) == 7
    with Image.open(clips["train/Open_fridge/1"].rgb[0]) as im:
        assert im.size == (43, 32)
    assert "3 clips (3 written now" in capsys.readouterr().out
    # a root that is not in the documented layout, and a split line naming a missing clip file
    with pytest.raises(SystemExit):
        prepare(["egtea", str(root), "--split", "4", "--out", str(out)])
    capsys.readouterr()
    assert prepare(["egtea", str(tmp_path), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "has no cropped_clips folder" in capsys.readouterr().err
    next(root.glob("cropped_clips/P03-R02-Pizza/*.mp4")).unlink()
    assert prepare(["egtea", str(root), "--out", str(tmp_path / "o3"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "test_split1.txt line 1" in err and "P03-R02-Pizza-500-900-F000012-F000017.mp4 does not exist" in err


def _epic(tmp_path: Path) -> tuple[Path, Path]:
    ann, videos = tmp_path / "annotations", tmp_path / "EPIC-KITCHENS"
    ann.mkdir()
    (videos / "P01" / "videos").mkdir(parents=True)
    write_video(videos / "P01" / "videos" / "P01_01.MP4", _frames(30))
    frames = videos / "P02" / "rgb_frames" / "P02_03"
    frames.mkdir(parents=True)
    for t, image in enumerate(_frames(12), start=1):
        Image.fromarray(image).save(frames / f"frame_{t:010d}.jpg", quality=95)
    with tarfile.open(frames.with_suffix(".tar"), "w") as tar:  # P02_03 also as the distributed tar
        for path in sorted(frames.iterdir()):
            tar.add(path, arcname=f"./{path.name}")
    tar_only = videos / "P03" / "rgb_frames"
    tar_only.mkdir(parents=True)
    (frames.with_suffix(".tar")).rename(tar_only / "P03_01.tar")
    head = ["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp", "stop_timestamp",
            "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun", "noun_class", "all_nouns",
            "all_noun_classes"]

    def row(pid: str, vid: str, start: int, stop: int, verb: str, noun: str) -> list[object]:
        return [f"{vid}_{start}", pid, vid, "", "", "", start, stop, f"{verb} {noun}", verb, 0, noun, 0, "", ""]

    for name, rows in (("EPIC_100_train.csv", [row("P01", "P01_01", 1, 8, "take", "plate"),
                                               row("P01", "P01_01", 20, 30, "take", "onion:spring"),
                                               row("P02", "P02_03", 3, 9, "put", "plate")]),
                       ("EPIC_100_validation.csv", [row("P03", "P03_01", 2, 7, "take", "plate")])):
        with open(ann / name, "w", newline="") as f:
            csv.writer(f).writerows([head, *rows])
    return ann, videos


def test_epic_rows_from_videos_frame_folders_and_tars(tmp_path: Path, capsys) -> None:
    ann, videos = _epic(tmp_path)
    out = tmp_path / "out"
    args = ["epic", str(ann), "--videos", str(videos), "--flow", "dis", "--short-side", "48", "--no-progress"]
    assert prepare([*args, "--out", str(out), "--label", "action", "--frame-format", "jpg"]) == 0
    clips = {c.key: c for c in layout.scan(out, need_mmaps=True, need_flow=True)}
    assert sorted(clips) == ["train/put_plate/1", "train/take_onion_spring/1", "train/take_plate/1",
                             "validation/take_plate/1"]
    assert [clips[k].num_frames for k in sorted(clips)] == [7, 11, 8, 6]
    assert clips["validation/take_plate/1"].rgb[0].suffix == ".jpg"
    by_participant = tmp_path / "by_participant"
    assert prepare([*args, "--out", str(by_participant), "--users", "participant"]) == 0
    assert sorted(c.key for c in layout.scan(by_participant)) == ["P01/take/1", "P01/take/2", "P02/put/1",
                                                                  "P03/take/1"]
    capsys.readouterr()
    (ann / "EPIC_100_validation.csv").write_text("participant_id,video_id,start_frame\nP03,P03_01,2\n")
    assert prepare([*args, "--out", str(tmp_path / "o2")]) == 2
    assert "EPIC_100_validation.csv lacks column(s) stop_frame, verb, noun" in capsys.readouterr().err
    assert prepare(["epic", str(tmp_path), "--videos", str(videos), "--out", str(tmp_path / "o3")]) == 2
    assert "holds neither EPIC_100_train.csv nor EPIC_100_validation.csv" in capsys.readouterr().err
