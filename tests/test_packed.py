"""The packed per-clip frame cache, uint8 frames normalised on the device, loaders that keep their workers."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from egomodel.config import DataConfig
from egomodel.data import layout
from egomodel.data.dataset import ClipDataset, make_loader
from egomodel.data.transforms import MEAN, STD, normalize_frames


def _ds(root, **kw):
    clips = layout.scan(root)
    cfg = DataConfig(root=str(root), frames=3, image_size=64, **kw)
    return ClipDataset(clips, layout.class_names(clips), cfg, seed=0, with_mmaps=True)


def _entries(folder):
    return sorted(folder.rglob("*.npy"))


def test_packed_cache_gives_the_decoded_clip_and_is_written_once(tiny_root, tmp_path):
    plain, packed = _ds(tiny_root), _ds(tiny_root, packed_cache=str(tmp_path / "packed"))
    for item in ((0, 3), 2, (5, 1)):
        a, b = plain[item], packed[item]
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["mmaps"], b["mmaps"])
    entries = _entries(tmp_path / "packed")
    assert len(entries) == 3 * 2  # frames and motion maps of clips 0, 2 and 5
    stamps = [e.stat().st_mtime_ns for e in entries]
    packed[(0, 9)]
    assert [e.stat().st_mtime_ns for e in _entries(tmp_path / "packed")] == stamps  # read, not rewritten


def test_packed_cache_sees_a_changed_frame_and_rewrites_a_corrupted_entry(tiny_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    folder = tmp_path / "packed"
    ds = _ds(root, packed_cache=str(folder))
    before = ds[0]["frames"]
    for entry in _entries(folder):
        entry.write_bytes(b"\x93NUMPY cut short")
    assert torch.equal(ds[0]["frames"], before)  # a corrupted entry is decoded again
    clip = ds.clips[0]
    frame = clip.rgb[layout.sample_indices(clip.num_frames, 3)[0]]
    Image.new("RGB", Image.open(frame).size, (255, 0, 0)).save(frame)
    after = ds[0]["frames"]
    assert not torch.equal(after, before)
    assert torch.equal(after, _ds(root)[0]["frames"])  # the new file, not the stale entry


def test_frames_travel_as_uint8_and_normalise_like_imagenet(tiny_root):
    x = _ds(tiny_root)[(1, 1)]["frames"]
    assert x.dtype == torch.uint8
    y = normalize_frames(x)
    expected = (x.numpy().astype(np.float32) / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
    assert y.dtype == torch.float32 and np.array_equal(y.numpy(), expected)
    assert normalize_frames(y) is y  # already normalised input passes through


def test_one_loader_serves_a_stage_with_the_same_batches_as_fresh_loaders(tiny_root):
    ds = _ds(tiny_root)
    loader = make_loader(ds, 4, 2, epoch_key=1)
    assert loader.persistent_workers
    for key in (1, 2, 3):
        loader.sampler.set_epoch(key)
        kept = [b["index"].tolist() + [b["frames"].sum().item()] for b in loader]
        fresh = [b["index"].tolist() + [b["frames"].sum().item()] for b in make_loader(ds, 4, 0, epoch_key=key)]
        assert kept == fresh


def test_device_clips_give_the_loaders_views_and_targets(tiny_root):
    """``data.device_clips``: same clip order, crops, flips, labels and motion-map targets as the loader;
    pixels within a grey level or two (PyTorch's antialiased bilinear resize vs Pillow's)."""
    from egomodel.data.device_clips import DeviceClips

    ds = _ds(tiny_root)
    clips = DeviceClips(ds, torch.device("cpu"), progress=False)
    assert clips.frames.dtype == torch.uint8 and clips.frames.shape[:2] == (len(ds), 3)
    for key in (1, 2):
        loader = clips.loader(4, key)
        cpu = make_loader(ds, 4, 0, epoch_key=key)
        assert len(loader) == len(cpu)
        for ours, theirs in zip(loader, cpu):
            assert torch.equal(ours["index"], theirs["index"]) and torch.equal(ours["label"], theirs["label"])
            levels = (ours["frames"] - normalize_frames(theirs["frames"])) * torch.tensor(STD).view(3, 1, 1) * 255
            assert levels.abs().max() <= 2.01 and levels.abs().mean() < 0.5
            assert torch.allclose(ours["mmaps"], theirs["mmaps"], atol=1e-4)


def test_device_clips_only_for_rgb_variants(tiny_root):
    import pytest

    from egomodel.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.device_clips"):
        load_config(None, ["data.device_clips=true", "model.variant=flow"])
    with pytest.raises(ConfigError, match="data.device_clips: 'always'; expected true, false or auto"):
        load_config(None, ["data.device_clips=always"])
    assert load_config(None, ["data.device_clips=auto", "model.variant=flow"]).data.device_clips == "auto"


def test_device_clips_auto_picks_cuda_when_the_clips_fit(tiny_root, capsys):
    """``data.device_clips: auto``: on CUDA for RGB clips taking at most a quarter of the free memory; the
    loader otherwise (on a CPU, for flow, or when they do not fit, saying so)."""
    from egomodel.data.device_clips import wanted

    ds, cuda = _ds(tiny_root), torch.device("cuda")
    assert wanted(True, ds, torch.device("cpu")) and not wanted(False, ds, cuda, free=10**12)
    assert not wanted("auto", ds, torch.device("cpu"))
    assert wanted("auto", ds, cuda, free=10**12)
    images, maps = ds.decoded(0)
    need = len(ds) * (sum(np.asarray(im).nbytes for im in images) + sum(m.nbytes for m in maps))
    assert wanted("auto", ds, cuda, free=4 * need) and not wanted("auto", ds, cuda, free=4 * need - 4)
    assert "data.device_clips=auto: the training clips need about" in capsys.readouterr().out
    clips = layout.scan(tiny_root)
    flow = ClipDataset(clips, layout.class_names(clips), DataConfig(root=str(tiny_root), frames=3, image_size=64),
                       seed=0, with_frames=False, with_flow=True)
    assert not wanted("auto", flow, cuda, free=10**12)


def test_device_clips_made_ahead_in_a_thread(tiny_root):
    """The prefetching loader (the default on CUDA) gives the same batches in the same order; an error in
    making a batch reaches the trainer; a trainer that stops early leaves no thread behind."""
    import threading

    import pytest

    from egomodel.data.device_clips import Ahead, DeviceClips, DeviceLoader

    clips = DeviceClips(_ds(tiny_root), torch.device("cpu"), progress=False)
    inline, made = DeviceLoader(clips, 4, 3, prefetch=0), DeviceLoader(clips, 4, 3, prefetch=2)
    for key in (3, 4, 6, 6):  # the next key's batches are started ahead; another key discards them
        inline.sampler.set_epoch(key)
        made.sampler.set_epoch(key)
        plain, ahead = list(inline), list(made)
        assert len(ahead) == len(plain) > 1
        for a, b in zip(ahead, plain):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert clips._ahead is not None and clips._ahead.key == (4, 7)
    nxt = DeviceLoader(clips, 4, 7, prefetch=2)  # the next stage's loader reads them
    assert [b["index"].tolist() for b in nxt] == [b["index"].tolist() for b in DeviceLoader(clips, 4, 7, prefetch=0)]
    clips.close()

    def boom(i):
        if i == 2:
            raise RuntimeError("clip 2 is broken")
        return {"i": torch.tensor(i)}

    with pytest.raises(RuntimeError, match="clip 2 is broken"):
        list(Ahead(boom, [0, 1, 2, 3], torch.device("cpu"), 1))
    it = iter(DeviceLoader(clips, 4, 3, prefetch=1))
    got = next(it)
    it.close()  # a trainer that stops early (what dropping the iterator does)
    first = next(iter(DeviceLoader(clips, 4, 3, prefetch=0)))
    assert torch.equal(got["index"], first["index"]) and torch.equal(got["frames"], first["frames"])
    assert not [t for t in threading.enumerate() if t.name == "device-clips-ahead"]
