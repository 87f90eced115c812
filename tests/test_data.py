"""Augmentation shared by frames, maps and flow; motion-map targets by hand; the user split."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from egomodel.config import DataConfig
from egomodel.data import layout
from egomodel.data.dataset import ClipDataset, EpochSampler, split_clips
from egomodel.data.layout import DataError
from egomodel.data.transforms import View, centre_view, draw_view, flow_tensor, motion_target, rgb_tensor


def test_motion_target_is_the_area_fraction_per_cell():
    gray = np.zeros((8, 8), np.uint8)
    gray[:4, :4] = 255  # top-left cell fully moving
    gray[0, 4:6] = 255  # 2 of 16 pixels of the top-right cell
    target = motion_target(gray, View(0, 0, 8), 2)
    np.testing.assert_allclose(target, [[1.0, 2 / 16], [0.0, 0.0]])
    flipped = motion_target(gray, View(0, 0, 8, flip=True), 2)
    np.testing.assert_allclose(flipped, [[2 / 16, 1.0], [0.0, 0.0]])
    # a crop: the right half of an 8x4 map, 4x4 region -> 2x2 cells of 2x2 pixels
    wide = np.zeros((4, 8), np.uint8)
    wide[0, 4] = 255
    np.testing.assert_allclose(motion_target(wide, View(4, 0, 4), 2), [[0.25, 0], [0, 0]])


def test_threshold_tau_turns_fractions_into_labels():
    import torch

    from egomodel.training.losses import ms_loss

    target = torch.tensor([[[[0.1, 0.3], [0.2, 0.25]]]])  # (B=1, T=1, 2, 2)
    logits = torch.zeros(1, 1, 2, 2, 2)
    logits[0, 0, 1] = torch.tensor([[-9.0, 9.0], [-9.0, 9.0]])  # predicts "moving" where > 0.2
    logits[0, 0, 0] = -logits[0, 0, 1]
    assert ms_loss(logits, target, "classification", 0.2) < 1e-3
    assert ms_loss(logits, target, "classification", 0.0) > 1.0  # at tau 0 every cell is moving
    reg = target.unsqueeze(2)
    assert ms_loss(reg, target, "regression_mse", 0.2) == 0 and ms_loss(reg + 0.5, target, "regression_l1", 0.2) == 0.5


def test_one_view_for_frames_maps_and_flow():
    """The moving object's pixels in the frame, its map and its flow stay aligned after crop+flip."""
    img = np.zeros((40, 48, 3), np.uint8)
    img[5:15, 30:40] = 255
    gray = np.zeros((40, 48), np.uint8)
    gray[5:15, 30:40] = 255
    view = View(8, 0, 40, flip=True)
    frame = rgb_tensor(Image.fromarray(img), view, 40)
    target = motion_target(gray, view, 40)
    bright = frame[0] > 0
    assert np.array_equal(bright, target > 0.5)
    flow = np.full((40, 48), 128 + 40, np.uint8)  # rightward motion
    fx = flow_tensor(flow, view, 40, is_x=True)
    fy = flow_tensor(flow, view, 40, is_x=False)
    assert (fx < 0).all() and (fy > 0).all()  # a flip inverts flow-x only


def test_views_cover_scales_corners_and_flips():
    rng = np.random.default_rng(0)
    views = {draw_view(rng, 80, 64) for _ in range(400)}
    assert {v.side for v in views} == {int(64 * s) for s in (1, 0.875, 0.75, 0.65625)}
    assert {v.flip for v in views} == {True, False}
    assert len({(v.left, v.top) for v in views if v.side == 42}) == 5
    c = centre_view(80, 64)
    assert (c.side, c.left, c.top, c.flip) == (56, 12, 4, False)


def test_augmentation_is_reproducible_and_per_epoch(tiny_root):
    clips = layout.scan(tiny_root)
    ds = ClipDataset(clips, layout.class_names(clips), DataConfig(root=str(tiny_root), frames=3, image_size=64),
                     seed=0, with_mmaps=True)
    a, b, c = ds[(0, 1)], ds[(0, 1)], ds[(0, 2)]
    assert a["frames"].shape == (3, 3, 64, 64) and a["mmaps"].shape == (3, 2, 2)
    assert np.array_equal(a["frames"], b["frames"]) and np.array_equal(a["mmaps"], b["mmaps"])
    views = {ds.view_for((0, k), 48, 40) for k in range(20)}
    assert len(views) > 1 and c["frames"].shape == a["frames"].shape
    order = list(EpochSampler(len(ds), 0, 5))
    assert order == list(EpochSampler(len(ds), 0, 5)) and order != list(EpochSampler(len(ds), 0, 6))


def test_split_by_users_never_leaks_test_users(tiny_root):
    clips = layout.scan(tiny_root)
    users = layout.list_users(tiny_root)
    train, val, test = split_clips(clips, DataConfig(test_users=["S2"]), 0, users)
    assert {c.user for c in test} == {"S2"} and "S2" not in {c.user for c in train + val}
    assert {c.label_name for c in val} == {c.label_name for c in train}  # stratified by class
    assert not {c.key for c in val} & {c.key for c in train}
    train, val, _ = split_clips(clips, DataConfig(test_users=["S2"], val_users=["S4"]), 0, users)
    assert {c.user for c in val} == {"S4"} and "S4" not in {c.user for c in train}
    train, val, _ = split_clips(clips, DataConfig(test_users=["S2"], val_fraction=0.0), 0, users)
    assert val == [] and {c.user for c in train} == {"S1", "S3", "S4"}
    with pytest.raises(DataError, match="S7"):
        split_clips(clips, DataConfig(test_users=["S7"]), 0, users)


def test_decoded_cache_gives_the_same_items_and_stays_bounded(tiny_root, monkeypatch):
    clips = layout.scan(tiny_root, need_flow=True)
    names = layout.class_names(clips)
    plain = ClipDataset(clips, names, DataConfig(root=str(tiny_root), frames=3, image_size=64), 0,
                        with_mmaps=True, with_flow=True)
    cached = ClipDataset(clips, names, DataConfig(root=str(tiny_root), frames=3, image_size=64, decoded_cache=1000),
                         0, with_mmaps=True, with_flow=True)
    decodes = []
    real = layout.open_image
    monkeypatch.setattr(layout, "open_image", lambda path, mode: decodes.append(path) or real(path, mode))
    for item in [(0, 1), (0, 2), 0, (1, 1)]:
        a, b = plain[item], cached[item]
        assert all(np.array_equal(a[k], b[k]) for k in a)
    n = len(decodes)
    cached[(0, 3)]  # clip 0 again: its images come from memory
    assert len(decodes) == n
    small = ClipDataset(clips, names, DataConfig(root=str(tiny_root), frames=3, image_size=64, decoded_cache=5), 0,
                        with_mmaps=True, with_flow=True)
    assert all(np.array_equal(small[0][k], plain[0][k]) for k in ("frames", "mmaps", "flow"))
    assert len(small._decoded) == 5
