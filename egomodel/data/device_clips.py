"""Training clips held on the training device (``data.device_clips``): augmentation runs there.

On a GPU the data loader, not the model, limits training (docs/benchmarks.md, GPU figures): the model's stage-2
step takes about 1,450 clips/s on an H100, while 14 loader processes deliver under 800. A clip's sampled
frames never change between epochs, only the crop and flip do, so the training split's decoded frames
(and motion maps) are loaded once as uint8 tensors on the device, and each batch is cropped, resized,
flipped and normalised there.

The views are the loader's (:meth:`ClipDataset.view_for`, same seed, epoch key and clip order), so a
run sees the same crops either way. The pixels are close to the loader's, not identical: the frames are
resized with PyTorch's antialiased bilinear filter (the loader uses Pillow's) and rounded to uint8 like
Pillow's output; the motion-map targets use Pillow's own BOX coefficients, as the loader does.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, nullcontext
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from egomodel.config import ConfigError
from egomodel.data.dataset import ClipDataset, EpochSampler
from egomodel.data.transforms import normalize_frames

PREFETCH_CUDA = 2  # batches made ahead on CUDA (benchmarks.device sets 0 to compare)


@lru_cache(maxsize=64)
def _box_weights(side: int, s: int) -> np.ndarray:
    """(s, side): Pillow's BOX resize of ``side`` pixels to ``s`` as a matrix (its coefficients: each
    output pixel averages the input pixels whose centres fall in its span)."""
    scale = side / s
    w = np.zeros((s, side), dtype=np.float64)
    for i in range(s):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - scale * 0.5 + 0.5), 0), min(int(centre + scale * 0.5 + 0.5), side)
        for j in range(lo, hi):
            x = (j - centre + 0.5) / scale
            w[i, j] = 1.0 if -0.5 < x <= 0.5 else 0.0
        w[i] /= max(w[i].sum(), 1e-12)
    return w.astype(np.float32)


def wanted(setting: bool | str, ds: ClipDataset, device: torch.device, free: int | None = None) -> bool:
    """``data.device_clips`` for this run: true, false, or (``auto``) true on CUDA for an RGB dataset whose
    training clips (estimated from the first) take at most a quarter of the device's free memory
    (``free`` bytes; default: what CUDA reports). Auto falls back to the loader, saying why when it is
    for memory."""
    if isinstance(setting, bool):
        return setting
    if device.type != "cuda" or not ds.with_frames or ds.with_flow or len(ds) == 0:
        return False
    images, maps = ds.decoded(0)
    frames = [np.asarray(im) for im in images]
    if len({f.shape[:2] for f in frames} | {m.shape[:2] for m in maps or []}) != 1:
        return False  # frames and motion maps of different sizes: the loader handles those
    need = len(ds) * (sum(f.nbytes for f in frames) + sum(m.nbytes for m in maps or []))
    free = torch.cuda.mem_get_info(device)[0] if free is None else free
    if need > free / 4:
        tqdm.write(f"data.device_clips=auto: the training clips need about {need / 2**30:.1f} GB, more than a "
                   f"quarter of the {free / 2**30:.1f} GB free on {device}; the loader processes augment them")
        return False
    return True


class DeviceClips:
    """The training split's clips as uint8 tensors on ``device``; :meth:`loader` gives training batches."""

    def __init__(self, ds: ClipDataset, device: torch.device, progress: bool = True) -> None:
        if not ds.with_frames or ds.with_flow:
            raise ConfigError("data.device_clips: only the RGB variants (convlstm, attention, ms, feedback) can hold "
                              "their clips on the device")
        self.ds, self.device = ds, device
        frames, maps = [], []
        for i in tqdm(range(len(ds)), desc="clips to the device", unit="clip", leave=False, disable=not progress):
            images, mm = ds.decoded(i)
            frames.append(np.stack([np.asarray(im) for im in images]))
            if mm is not None:
                maps.append(np.stack(mm))
        sizes = {f.shape[1:3] for f in frames} | {m.shape[1:3] for m in maps}
        if len(sizes) != 1:
            raise ConfigError(f"data.device_clips: frames and motion maps must share one size, found {sorted(sizes)}")
        self.frames = torch.from_numpy(np.stack(frames)).to(device)  # (N, T, H, W, 3) uint8
        self.maps = torch.from_numpy(np.stack(maps)).to(device) if maps else None  # (N, T, H, W) uint8
        self.labels = torch.tensor([ds.index[c.label_name] for c in ds.clips], device=device)
        self.height, self.width = self.frames.shape[2:4]
        self._ahead: Ahead | None = None
        self.batch([(0, 0)])  # loads the kernels (CUDA loads them lazily) before the first timed step

    def take_ahead(self, key: tuple[int, int]) -> Ahead | None:
        """The batches already started for ``(batch size, epoch key)``, if those are the ones started."""
        run, self._ahead = self._ahead, None
        if run is not None and run.key != key:
            run.close()
            return None
        return run

    def start_ahead(self, chunks: list[list[tuple[int, int]]], key: tuple[int, int], depth: int) -> None:
        """Start making the batches a loader expects to read next (kept across the loaders of a run's
        stages: the next stage's first epoch usually has the next key and the same batch size)."""
        self.close()
        self._ahead = Ahead(self.batch, chunks, self.device, depth, key)

    def close(self) -> None:
        """Stop the thread making batches ahead (it holds this object: call this when training is done)."""
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None

    def batch(self, items: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Training batch for ``(clip, epoch key)`` items. Clips are grouped by crop side (the four
        scales); each group is one gather, one resize and one flip, not a kernel per clip."""
        dev = self.device
        idx = [i for i, _ in items]
        views = [self.ds.view_for(item, self.width, self.height) for item in items]
        size = self.ds.cfg.image_size
        b, t = len(items), self.frames.shape[1]
        frames = torch.empty(b, t, 3, size, size, dtype=torch.uint8, device=dev)
        maps = torch.empty(b, t, size // 32, size // 32, device=dev) if self.maps is not None else None
        for side in sorted({v.side for v in views}):
            pos = [k for k, v in enumerate(views) if v.side == side]
            # one host-to-device copy per group: where in the batch, which clip, crop corner, flip
            meta = torch.tensor([[k, idx[k], views[k].top, views[k].left, views[k].flip] for k in pos]).to(dev)
            where, flip = meta[:, 0], meta[:, 4].bool().view(-1, 1, 1, 1)
            crops = self._crops(self.frames, meta[:, 1], meta[:, 2], meta[:, 3], side)  # (G, T, side, side, 3)
            x = crops.flatten(0, 1).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            x = x.round_().clamp_(0, 255).to(torch.uint8).unflatten(0, (len(pos), t))  # Pillow returns uint8 too
            frames[where] = torch.where(flip[..., None], x.flip(-1), x)
            if maps is not None:
                w = torch.from_numpy(_box_weights(side, size // 32)).to(dev)
                frac = self._crops(self.maps, meta[:, 1], meta[:, 2], meta[:, 3], side).float() / 255.0
                mm = (w @ frac @ w.T).clamp_(0.0, 1.0)
                maps[where] = torch.where(flip, mm.flip(-1), mm)
        out = {"frames": normalize_frames(frames), "label": self.labels[idx], "index": torch.tensor(idx).to(dev)}
        if maps is not None:
            out["mmaps"] = maps
        return out

    @staticmethod
    def _crops(store: torch.Tensor, clip: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
               side: int) -> torch.Tensor:
        """(G, T, side, side, ...) square crops of ``store[clip]`` at (top, left), one gather."""
        span = torch.arange(side, device=store.device)
        t = torch.arange(store.shape[1], device=store.device).view(1, -1, 1, 1)
        rows = (top.view(-1, 1) + span).view(-1, 1, side, 1)
        cols = (left.view(-1, 1) + span).view(-1, 1, 1, side)
        return store[clip.view(-1, 1, 1, 1), t, rows, cols]

    def loader(self, batch_size: int, epoch_key: int) -> DeviceLoader:
        return DeviceLoader(self, batch_size, epoch_key)


class DeviceLoader:
    """What the trainer needs of a training DataLoader: ``len``, iteration, ``sampler.set_epoch``.

    With ``prefetch`` > 0 (default: 2 on CUDA, 0 elsewhere) batches are made that many ahead in a thread
    (:class:`Ahead`), on CUDA on a side stream, so the next batch's crops are launched while the current
    step runs. When an epoch has been read to its end, the next epoch's first batches (the sampler's
    next key, this batch size) are started at once, so they are made while the trainer validates;
    :class:`DeviceClips` keeps them, so the next stage's first epoch finds them too. An epoch with
    another key or batch size discards them. The Python work per batch is a few milliseconds, about as
    long as a frozen-backbone step on an H100."""

    def __init__(self, clips: DeviceClips, batch_size: int, epoch_key: int, prefetch: int | None = None) -> None:
        self.clips, self.batch_size = clips, batch_size
        self.sampler = EpochSampler(len(clips.ds), clips.ds.seed, epoch_key)
        self.prefetch = (PREFETCH_CUDA if clips.device.type == "cuda" else 0) if prefetch is None else prefetch

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def _chunks(self, key: int) -> list[list[tuple[int, int]]]:
        order = list(EpochSampler(len(self.clips.ds), self.clips.ds.seed, key))
        return [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        key = self.sampler.key
        if self.prefetch <= 0:
            for chunk in self._chunks(key):
                yield self.clips.batch(chunk)
            return
        run = self.clips.take_ahead((self.batch_size, key))
        if run is None:
            run = Ahead(self.clips.batch, self._chunks(key), self.clips.device, self.prefetch,
                        (self.batch_size, key))
        with closing(run):
            yield from run
        self.clips.start_ahead(self._chunks(key + 1), (self.batch_size, key + 1), self.prefetch)


class Ahead:
    """Iterates ``make(item)`` for each item, in order, made up to ``depth`` items ahead in a thread.

    On CUDA the thread launches on its own stream; each batch is handed over with an event the
    consumer's stream waits on, and its tensors are marked as used there (``record_stream``), so the
    caching allocator never reuses their memory early. An exception in ``make`` is raised to the
    consumer; :meth:`close` (also when a consumer stops early) stops the thread."""

    def __init__(self, make: Callable[[Any], dict[str, torch.Tensor]], items: list[Any], device: torch.device,
                 depth: int, key: Any = None) -> None:
        self.key, self.device = key, device
        self._cuda = device.type == "cuda"
        self._box: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(make, items), name="device-clips-ahead",
                                        daemon=True)
        self._thread.start()

    def _put(self, x: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._box.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, make: Callable[[Any], dict[str, torch.Tensor]], items: list[Any]) -> None:
        try:
            side = torch.cuda.Stream(self.device) if self._cuda else None
            on_side = (torch.cuda.device(self.device), torch.cuda.stream(side)) if self._cuda else (nullcontext(),) * 2
            with on_side[0], on_side[1]:
                for item in items:
                    if self._stop.is_set():
                        return
                    batch = make(item)
                    event = None
                    if side is not None:
                        event = torch.cuda.Event()
                        event.record(side)
                    if not self._put((batch, event)):
                        return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(e)
            return
        self._put(None)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            got = self._box.get()
            if got is None:
                return
            if isinstance(got, BaseException):
                raise got
            batch, event = got
            if event is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(event)
                for v in batch.values():
                    v.record_stream(stream)
            yield batch

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
