"""Where a backbone's ImageNet weights live on this machine and whether they are intact: torchvision's
file in torch hub's cache (``TORCH_HOME`` moves it), its SHA-256 checked against the prefix its name
carries. :mod:`egomodel.model.backbone` loads it; :mod:`egomodel.weights` fetches it."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from torchvision.models import ResNet18_Weights, ResNet34_Weights

# model.backbone -> torchvision's URL of its ImageNet weights
WEIGHT_URLS = {
    "resnet34": ResNet34_Weights.IMAGENET1K_V1.url,
    "resnet18": ResNet18_Weights.IMAGENET1K_V1.url,
}


class WeightsError(FileNotFoundError):
    """ImageNet weights were asked for but are not on disk, or not intact."""


def imagenet_weights_path(backbone: str = "resnet34") -> Path:
    """Where torchvision keeps the backbone's ImageNet file once downloaded."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(WEIGHT_URLS[backbone]).name


def fetch_command(backbone: str) -> str:
    return f"python -m egomodel.weights fetch --backbone {backbone}"


def file_name(backbone: str) -> str:
    """torchvision's file name of the backbone's ImageNet weights."""
    if backbone not in WEIGHT_URLS:
        raise WeightsError(f"unknown backbone {backbone!r}; one of {', '.join(WEIGHT_URLS)}")
    return WEIGHT_URLS[backbone].rsplit("/", 1)[-1]


def hash_prefix(name: str) -> str:
    """The SHA-256 prefix a torchvision file name carries: ``resnet34-b627a593.pth`` -> ``b627a593``."""
    stem = name.rsplit(".", 1)[0]
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    if len(prefix) < 8 or any(c not in "0123456789abcdef" for c in prefix):
        raise WeightsError(f"{name}: the file name carries no SHA-256 prefix (NAME-<8+ hex digits>.pth)")
    return prefix


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=16)
def _hash_of(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per process for a given file state (size and modification time)."""
    return sha256(Path(path))


def intact(path: Path, prefix: str) -> str | None:
    """None when ``path`` is a file whose SHA-256 starts with ``prefix``, else what is wrong."""
    try:
        st = path.stat()
    except OSError:
        return f"{path} is missing"
    if not path.is_file():
        return f"{path} is not a file"
    digest = _hash_of(str(path), st.st_size, st.st_mtime_ns)
    if not digest.startswith(prefix):
        return f"{path} is damaged ({st.st_size} bytes, SHA-256 {digest[:12]}..., expected {prefix}...)"
    return None


def check_weights(backbone: str, pretrained: str = "imagenet", name: str | None = None) -> str | None:
    """None when the weights ``model.pretrained`` asks for are usable on this machine, else a message naming
    the path and what to run. ``imagenet``: torch hub's file (``name``, default torchvision's for
    ``backbone``), present and with its hash (hashed once per process); a path: that file exists;
    ``none``: nothing is needed."""
    if pretrained == "none":
        return None
    if pretrained != "imagenet":
        path = Path(pretrained).expanduser()
        return None if path.is_file() else f"model.pretrained={pretrained}: no such file on this machine"
    path = imagenet_weights_path(backbone) if name is None else Path(torch.hub.get_dir()) / "checkpoints" / name
    problem = intact(path, hash_prefix(path.name))
    if problem is None:
        return None
    return (f"{backbone} ImageNet weights: {problem}. Run `{fetch_command(backbone)}` on this machine "
            f"(add --from URL|PATH|s3://... where it has no internet access; TORCH_HOME moves the cache), "
            f"pass model.pretrained=/path/to/{backbone}.pth, or train from scratch with model.pretrained=none")
