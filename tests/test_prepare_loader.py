"""What the loader learnt for prepared data sets: any user names, JPEG frames, and motion maps or flow
images of another size than the frames (the crop box is scaled)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from egomodel.config import DataConfig
from egomodel.data import layout
from egomodel.data.dataset import ClipDataset, load_bundle
from egomodel.data.transforms import View, motion_target


def test_maps_and_flow_of_half_size_give_the_same_targets(tiny_root: Path, tmp_path: Path) -> None:
    """Frames 48x40 with maps and flow at 24x20: the crop box, in frame pixels, is halved for them."""
    half = tmp_path / "half"
    shutil.copytree(tiny_root, half)
    for path in [*half.glob("processed_frames2/*/*/*/mmaps/*.png"), *half.glob("flow_*_processed/*/*/*/*.png")]:
        with Image.open(path) as im:
            im.resize((im.width // 2, im.height // 2), Image.BOX).save(path)
    cfg = DataConfig(root=str(tiny_root), frames=3, image_size=64, flow_stack=2, flow_segments=2)
    full_clips, half_clips = layout.scan(tiny_root, need_flow=True), layout.scan(half, need_flow=True)
    names = layout.class_names(full_clips)
    full = ClipDataset(full_clips, names, cfg, 0, with_mmaps=True, with_flow=True)
    small = ClipDataset(half_clips, names, cfg, 0, with_mmaps=True, with_flow=True)
    items = [(i, k) for i in range(0, len(full), 5) for k in range(3)] + [0, 7]
    for item in items:
        a, b = full[item], small[item]
        assert np.abs(a["mmaps"].numpy() - b["mmaps"].numpy()).max() < 0.2, item
        assert np.abs(a["flow"].numpy() - b["flow"].numpy()).mean() < 0.02, item
    # what the fix changed: the same half-size map cropped with the box unscaled covers another region
    gray = np.zeros((40, 48), np.uint8)
    gray[:20, :24] = 255  # the top-left quarter of the frame moves
    small_map = np.asarray(Image.fromarray(gray).resize((24, 20), Image.BOX))
    view = View(8, 8, 32)
    np.testing.assert_allclose(motion_target(small_map, view, 2, (48, 40)), motion_target(gray, view, 2), atol=0.05)
    assert np.abs(motion_target(small_map, view, 2) - motion_target(gray, view, 2)).max() > 0.3


def test_any_user_names_and_jpeg_frames(tiny_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "named"
    shutil.copytree(tiny_root, root)
    names = {"S1": "alice", "S2": "bob", "S3": "P03", "S4": "train"}
    for sub in ("processed_frames2", "flow_x_processed", "flow_y_processed"):
        for old, new in names.items():
            (root / sub / old).rename(root / sub / new)
    for path in root.glob("processed_frames2/*/*/*/rgb/*.png"):
        with Image.open(path) as im:
            im.save(path.with_suffix(".jpg"), quality=95)
        path.unlink()
    assert layout.list_users(root) == ["P03", "alice", "bob", "train"]
    bundle = load_bundle(DataConfig(root=str(root), frames=3, test_users=["bob"]), 0, need_mmaps=True, need_flow=True)
    assert {c.user for c in bundle.test} == {"bob"} and len(bundle.train) + len(bundle.val) == 33
    clip = bundle.test[0]
    assert clip.rgb[0].name == "rgb0001.jpg"
    item = ClipDataset(bundle.test, bundle.classes, DataConfig(frames=3, image_size=64), 0, with_mmaps=True)[0]
    assert item["frames"].shape == (3, 3, 64, 64)
    assert DataConfig().test_users == ["S2"]  # GTEA61's default split is unchanged
