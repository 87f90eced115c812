"""A stand-in for torchvision's ``resnet18-f37072fd.pth`` that passes the same SHA-256 check.

The real ImageNet file cannot be downloaded here (no internet), and the check it must pass is the point of
the rehearsal: ``python -m egomodel.weights fetch`` accepts a file only when its SHA-256 starts with the 8 hex
digits of its torchvision name. So the stand-in is a genuine ResNet-18 state dict (torchvision's
initialisation under ``torch.manual_seed(0)``, 11.7 M parameters) whose last value,
``layer4.1.bn2.num_batches_tracked`` (a counter a state dict may hold any value in), was chosen so that the
file's SHA-256 starts with ``f37072fd``: a 32-bit prefix, found once by trying values from the SHA-256 state
after the fixed part (a C loop over OpenSSL's SHA256_Update/Final, 13 M tries/s per core; this one took 1.8e10
tries, about 23 CPU-minutes). Only ResNet-18 has a stand-in: the rehearsal's setup fetches that backbone.

The file is written in PyTorch's legacy (non-zip) format, which ``torch.load(weights_only=True)`` reads,
with storage keys of our own ("0000", "0001", ... instead of memory addresses), so the same bytes come out
on every run and the counter's 8 bytes are the file's last ones.
"""

from __future__ import annotations

import io
import pickle
import struct

import torch
import torchvision

# backbone -> the value of its last BN's counter that gives the file torchvision's SHA-256 prefix
NONCES: dict[str, int] = {"resnet18": 18027141829}  # SHA-256 f37072fda218...


def counter(backbone: str) -> str:
    return {"resnet18": "layer4.1.bn2.num_batches_tracked", "resnet34": "layer4.2.bn2.num_batches_tracked"}[backbone]


def state_dict(backbone: str, nonce: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    sd = getattr(torchvision.models, backbone)().state_dict()
    del sd[counter(backbone)]
    sd[counter(backbone)] = torch.tensor(nonce, dtype=torch.int64)  # last: its storage is written last
    return sd


def standin_bytes(backbone: str, nonce: int) -> bytes:
    """``state_dict(backbone, nonce)`` in torch's legacy format, byte for byte the same on every run."""
    storages: dict[str, torch.Tensor] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> tuple | None:
            if not isinstance(obj, torch.storage.TypedStorage):
                return None
            key = f"{len(storages):04d}"
            storages[key] = obj
            return ("storage", getattr(torch, obj._pickle_storage_type()), key, "cpu", obj._size(), None)

    f = io.BytesIO()
    for header in (torch.serialization.MAGIC_NUMBER, torch.serialization.PROTOCOL_VERSION,
                   {"protocol_version": torch.serialization.PROTOCOL_VERSION, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 8}}):
        pickle.dump(header, f, protocol=2)
    Pickler(f, protocol=2).dump(state_dict(backbone, nonce))
    pickle.dump(sorted(storages), f, protocol=2)
    for key in sorted(storages):
        storage = storages[key]
        data = torch.empty(0, dtype=storage.dtype).set_(storage).numpy().tobytes()  # little-endian, as recorded
        f.write(struct.pack("<q", storage._size()) + data)
    return f.getvalue()
