"""Stage-1 feature cache: the frozen backbone's attended features, computed once per clip view.

In stage 1 nothing up to the attended layer-4 features trains, so each clip is encoded for a fixed
number of augmentation draws (``train.stage1_views``) and the ConvLSTM and classifier train on the
cached tensors: every epoch picks one cached view per clip. With the cache off (0, the default),
every epoch draws a fresh view, as the paper does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate
from tqdm import tqdm

from egomodel.data.dataset import ClipDataset
from egomodel.model.network import EgoRNN
from egomodel.training.steps import autocast, to_device

VIEW_KEY = 1_000_000  # augmentation keys of cached views, apart from epoch numbers


class FeatureCache:
    def __init__(self, model: EgoRNN, ds: ClipDataset, views: int, device: torch.device,
                 batch_size: int = 8, progress: bool = True) -> None:
        """views > 0: that many augmented training views per clip; views == 0: the centre view."""
        was_training = model.training
        model.eval()
        keys = [VIEW_KEY + v for v in range(views)] or [None]
        per_view = []
        bar = tqdm(total=len(keys) * len(ds), desc="caching stage-1 features", unit="clip", leave=False,
                   disable=not progress)
        with torch.no_grad():
            for key in keys:
                chunks = []
                for start in range(0, len(ds), batch_size):
                    stop = min(len(ds), start + batch_size)
                    items = [ds[i] if key is None else ds[(i, key)] for i in range(start, stop)]
                    frames = to_device(default_collate(items), device)["frames"]
                    chunks.append(model.encode_clips(frames).float().cpu())
                    bar.update(len(items))
                per_view.append(torch.cat(chunks))
        bar.close()
        model.train(was_training)
        self.features = torch.stack(per_view, 1)  # (N, V, T, 512, s, s)
        self.labels = torch.tensor([ds.index[c.label_name] for c in ds.clips])
        self.seed = ds.seed

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, epoch_key: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled batches with one cached view per clip (training), or all clips in order."""
        n, v = self.features.shape[:2]
        if epoch_key is None:
            order, views = np.arange(n), np.zeros(n, dtype=int)
        else:
            rng = np.random.default_rng([self.seed, epoch_key])
            order, views = rng.permutation(n), rng.integers(v, size=n)
        out = []
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            out.append((self.features[idx, views[idx]], self.labels[idx]))
        return out


def train_cached_epoch(model: EgoRNN, cache: FeatureCache, opt: torch.optim.Optimizer, batch_size: int,
                       epoch_key: int, device: torch.device, precision: str = "auto") -> dict[str, float]:
    """One epoch of ConvLSTM + classifier on cached features, at the precision the uncached path uses."""
    model.train()
    loss_sum = correct = seen = 0.0
    for x, y in cache.batches(batch_size, epoch_key):
        x, y = x.to(device), y.to(device)
        with autocast(device, precision):
            logits = model.classify(x)
        loss = F.cross_entropy(logits.float(), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} (stage 1, cached features)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += float((logits.argmax(1) == y).sum())
        seen += len(y)
    return {"train_loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1), "data_wait_fraction": 0.0}


@torch.no_grad()
def evaluate_cached(model: EgoRNN, cache: FeatureCache, device: torch.device,
                    precision: str = "auto") -> tuple[float, float]:
    model.eval()
    losses, hits = 0.0, 0.0
    for x, y in cache.batches(64, None):
        with autocast(device, precision):
            logits = model.classify(x.to(device)).float()
        y = y.to(device)
        losses += float(F.cross_entropy(logits, y, reduction="sum"))
        hits += float((logits.argmax(1) == y).sum())
    return losses / max(len(cache), 1), hits / max(len(cache), 1)
