"""Clips -> tensors, the user split, and loaders whose augmentation is reproducible.

Augmentation randomness comes from ``(seed, epoch key, clip index)``, not from worker state, so
a resumed run and a run with a different number of workers see the same views.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from egomodel.config import DataConfig
from egomodel.data import layout, packed
from egomodel.data.layout import Clip, DataError
from egomodel.data.transforms import View, centre_view, draw_view, flow_tensor, motion_target, rgb_tensor


@dataclass
class DataBundle:
    root: Path
    classes: list[str]
    train: list[Clip]
    val: list[Clip]
    test: list[Clip]
    fingerprint: str


def resolve_root(root: str) -> Path:
    """``synthetic`` means the cached built-in synthetic set (generated on first use)."""
    if root == "synthetic":
        from egomodel.data.synthetic import default_root

        return default_root()
    return Path(root).expanduser()


def split_clips(
    clips: Sequence[Clip], cfg: DataConfig, seed: int, users: Sequence[str]
) -> tuple[list[Clip], list[Clip], list[Clip]]:
    """Test = test users. Validation = named users, or a class-stratified fraction of the rest
    (none when ``val_fraction`` is 0: a final re-training on train+val users)."""
    for u in [*cfg.test_users, *cfg.val_users]:
        if u not in users:
            raise DataError(f"user {u} (data.test_users / data.val_users) has no folder; found {', '.join(users)}")
    test = [c for c in clips if c.user in cfg.test_users]
    rest = [c for c in clips if c.user not in cfg.test_users]
    if cfg.val_users:
        val = [c for c in rest if c.user in cfg.val_users]
        train = [c for c in rest if c.user not in cfg.val_users]
    else:
        by_class: dict[str, list[Clip]] = defaultdict(list)
        for c in rest:
            by_class[c.label_name].append(c)
        rng = np.random.default_rng(seed)
        val_keys = set()
        for name in sorted(by_class):
            group = by_class[name]
            k = int(round(len(group) * cfg.val_fraction)) if len(group) > 1 else 0
            for i in rng.permutation(len(group))[:k]:
                val_keys.add(group[i].key)
        val = [c for c in rest if c.key in val_keys]
        train = [c for c in rest if c.key not in val_keys]
    for name, part in (("training", train), ("validation", val), ("test", test)):
        if not part and not (name == "validation" and cfg.val_fraction == 0 and not cfg.val_users):
            raise DataError(f"the {name} split is empty (users {', '.join(users)}, test {cfg.test_users})")
    return train, val, test


def load_bundle(cfg: DataConfig, seed: int, need_mmaps: bool, need_flow: bool = False) -> DataBundle:
    """Scan, check the frames each clip will use, split. Every data error surfaces here."""
    root = resolve_root(cfg.root)
    users = layout.list_users(root)
    clips = layout.scan(root, need_mmaps=need_mmaps, need_flow=need_flow, min_frames=cfg.frames)
    classes = layout.class_names(clips)
    for c in tqdm(clips, desc="checking frames", unit="clip", leave=False, disable=len(clips) < 200):
        for i in layout.sample_indices(c.num_frames, cfg.frames):  # the frames training will read
            layout.verify_image(c.rgb[i])
            if need_mmaps:  # every sampled frame needs a map within reach
                layout.verify_image(layout.nearest_mmap(c, i + 1, cfg.mmap_reach))
        if need_flow:
            if len(c.flow_x) < cfg.flow_stack:
                raise DataError(f"flow folder of clip {c.rgb[0].parent.parent} has {len(c.flow_x)} images, "
                                f"fewer than data.flow_stack={cfg.flow_stack}")
            layout.verify_image(c.flow_x[0])
            layout.verify_image(c.flow_y[0])
    train, val, test = split_clips(clips, cfg, seed, users)
    return DataBundle(root, classes, train, val, test, layout.fingerprint(root, clips))


class ClipDataset(Dataset):
    """Items are ``(index, epoch_key)`` (training: a random view per clip and epoch) or ``index``
    (evaluation: the centre view). Returns frames (T, 3, S, S) as uint8 (``transforms.normalize_frames``
    or ``steps.to_device`` turn them into the model's normalised float input), mmaps (T, s, s), flow
    (K, 2*flow_stack, S, S) and label; K is 1 in training (a random start) and ``flow_segments``
    at evaluation (evenly spaced starts)."""

    def __init__(
        self,
        clips: Sequence[Clip],
        classes: Sequence[str],
        cfg: DataConfig,
        seed: int = 0,
        with_mmaps: bool = False,
        with_flow: bool = False,
        with_frames: bool = True,
    ) -> None:
        self.clips = list(clips)
        self.index = {name: i for i, name in enumerate(classes)}
        self.cfg = cfg
        self.seed = seed
        self.with_mmaps = with_mmaps
        self.with_flow = with_flow
        self.with_frames = with_frames
        self._decoded: OrderedDict[Path, object] = OrderedDict()  # LRU of decoded images (data.decoded_cache)
        folder = packed.resolve(cfg.packed_cache)
        self._packed = packed.PackedFrames(folder) if folder is not None else None

    def _load(self, path: Path, rgb: bool) -> object:
        """Decode an image (PIL RGB or gray uint8 array), through the per-process LRU when it is on."""
        if self.cfg.decoded_cache == 0:
            return layout.load_rgb(path) if rgb else layout.load_gray(path)
        image = self._decoded.get(path)
        if image is None:
            image = self._decoded[path] = layout.load_rgb(path) if rgb else layout.load_gray(path)
            if len(self._decoded) > self.cfg.decoded_cache:
                self._decoded.popitem(last=False)
        else:
            self._decoded.move_to_end(path)
        return image

    def __len__(self) -> int:
        return len(self.clips)

    def view_for(self, item: int | tuple[int, int], width: int, height: int) -> View:
        if isinstance(item, tuple):
            idx, key = item
            return draw_view(np.random.default_rng([self.seed, key, idx]), width, height)
        return centre_view(width, height)

    def _images(self, paths: list[Path], rgb: bool) -> list:
        """Decoded frames (PIL RGB) or motion maps (gray uint8 arrays), from the packed cache when it is on."""
        if self._packed is None:
            return [self._load(p, rgb) for p in paths]
        decode = (lambda p: np.asarray(layout.load_rgb(p))) if rgb else layout.load_gray
        arr = self._packed.get(paths, "rgb" if rgb else "gray", decode)
        return [Image.fromarray(a) for a in arr] if rgb else list(arr)

    def decoded(self, idx: int) -> tuple[list, list | None]:
        """Clip ``idx``'s sampled frames (PIL RGB) and, with ``with_mmaps``, their motion maps (gray
        uint8 arrays), before any augmentation."""
        clip = self.clips[idx]
        frames = layout.sample_indices(clip.num_frames, self.cfg.frames)
        return self._images([clip.rgb[i] for i in frames], True), self._maps(clip, frames)

    def _maps(self, clip: Clip, frames: list[int]) -> list | None:
        if not self.with_mmaps:
            return None
        return self._images([layout.nearest_mmap(clip, i + 1, self.cfg.mmap_reach) for i in frames], False)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        idx = item[0] if isinstance(item, tuple) else item
        clip = self.clips[idx]
        size, s = self.cfg.image_size, self.cfg.image_size // 32
        out = {"label": torch.tensor(self.index[clip.label_name]), "index": torch.tensor(idx)}
        if self.with_frames:
            images, maps = self.decoded(idx)
            frame_size = images[0].size
            view = self.view_for(item, *frame_size)
            out["frames"] = torch.from_numpy(np.stack([rgb_tensor(im, view, size) for im in images]))  # uint8
        else:
            frames = layout.sample_indices(clip.num_frames, self.cfg.frames)
            frame_size = self._load(clip.rgb[frames[0]], True).size
            view = self.view_for(item, *frame_size)
            maps = self._maps(clip, frames)
        # the view is in RGB pixels; maps and flow of another size get it scaled (transforms._crop_resize)
        if maps is not None:
            out["mmaps"] = torch.from_numpy(np.stack([motion_target(m, view, s, frame_size) for m in maps]))
        if self.with_flow:
            starts = self.flow_starts(item, len(clip.flow_x))
            out["flow"] = torch.from_numpy(self._flow(clip, starts, view, size, frame_size))
        return out

    def flow_starts(self, item: int | tuple[int, int], n: int) -> list[int]:
        """0-based first flow frame of each stack: one random start in training (Ego-RNN), else
        ``flow_segments`` evenly spaced ones."""
        last = n - self.cfg.flow_stack
        if isinstance(item, tuple):
            idx, key = item
            return [int(np.random.default_rng([self.seed, key, idx, 1]).integers(0, last + 1))]
        return [int(v) for v in np.linspace(0, last, self.cfg.flow_segments).round()]

    def _flow(self, clip: Clip, starts: list[int], view: View, size: int,
              frame_size: tuple[int, int] | None = None) -> np.ndarray:
        """(K, 2*flow_stack, S, S): for each start, flow x and y of consecutive frames, interleaved."""
        def plane(path: Path, is_x: bool) -> np.ndarray:
            return flow_tensor(self._load(path, False), view, size, is_x, frame_size)

        return np.stack([
            np.stack([plane(p, is_x) for i in range(k, k + self.cfg.flow_stack)
                      for p, is_x in ((clip.flow_x[i], True), (clip.flow_y[i], False))])
            for k in starts
        ])


class EpochSampler(Sampler):
    """Shuffles with a generator seeded by ``(seed, key)`` and tags each index with ``key``.
    ``set_epoch(key)`` moves a loader on to the next epoch (PyTorch's DistributedSampler convention),
    so one loader and its worker processes serve a whole stage."""

    def __init__(self, n: int, seed: int, key: int) -> None:
        self.n, self.seed, self.key = n, seed, key

    def set_epoch(self, key: int) -> None:
        self.key = key

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.key)
        return iter([(int(i), self.key) for i in torch.randperm(self.n, generator=g)])

    def __len__(self) -> int:
        return self.n


def make_loader(
    ds: ClipDataset, batch_size: int, num_workers: int, epoch_key: int | None = None, drop_last: bool = False
) -> DataLoader:
    """Training loader when ``epoch_key`` is given (shuffled, augmented; ``loader.sampler.set_epoch(k)``
    for the next epoch), else evaluation order. Worker processes live as long as the loader (their
    start-up and ``data.decoded_cache`` are paid once, not every epoch)."""
    sampler = None if epoch_key is None else EpochSampler(len(ds), ds.seed, epoch_key)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
