"""``python -m egomodel.prepare fill ROOT``: the missing motion maps and flow of a GTEA61-layout root."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from egomodel.data import layout
from egomodel.prepare import main as prepare


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_fill_computes_what_is_missing_and_keeps_what_is_there(tiny_root: Path, tmp_path: Path,
                                                              capsys) -> None:
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    for folder in root.glob("*/S[34]"):
        shutil.rmtree(folder)  # two users and two classes are enough
    for folder in [*root.glob("*/S[12]/slide_box"), *root.glob("*/S[12]/shake_box")]:
        shutil.rmtree(folder)
    for folder in root.glob("processed_frames2/*/*/*/mmaps"):
        shutil.rmtree(folder)  # no clip has motion maps
    kept = {p: p.read_bytes() for p in root.glob("flow_*_processed/S1/*/*/*.png")}  # S1 keeps its flow
    shutil.rmtree(root / "flow_x_processed" / "S2")
    shutil.rmtree(root / "flow_y_processed" / "S2")
    assert prepare(["fill", str(root), "--workers", "2", "--map-threshold", "1", "--no-progress"]) == 0
    assert "12 clips (12 written now, 0 already there)" in capsys.readouterr().out
    clips = layout.scan(root, need_mmaps=True, need_flow=True)
    ious = []
    for clip in clips:
        assert sorted(clip.mmaps) == list(range(1, clip.num_frames + 1))
        truth_dir = tiny_root / "processed_frames2" / clip.user / clip.label_name / clip.instance / "mmaps"
        for t, path in clip.mmaps.items():
            found = _gray(path)
            assert found.shape == (40, 48) and set(np.unique(found)) <= {0, 255}
            truth = _gray(truth_dir / f"map{t:04d}.png") > 0
            ious.append(((found > 0) & truth).sum() / max(((found > 0) | truth).sum(), 1))
        if clip.user != "S1":
            assert len(clip.flow_x) == len(clip.flow_y) == clip.num_frames - 1
    assert all(path.read_bytes() == data for path, data in kept.items())
    # TV-L1, a static camera and objects moving 1-4 px per frame at 48x40: a loose bound at this size
    assert np.mean(ious) >= 0.3, np.mean(ious)
    assert prepare(["fill", str(root), "--no-progress"]) == 0  # resumable: nothing left to do
    assert "12 clips (0 written now, 12 already there)" in capsys.readouterr().out
