"""The machine a figure was measured on, in one line (shared by the benchmark commands)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"cpu capability {torch.backends.cpu.get_cpu_capability()}")


def describe(device) -> str:  # noqa: ANN001 - a torch.device; torch is imported late here
    """The device a figure was measured on: a GPU's name, memory and CUDA version, or the CPU."""
    import torch

    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{platform.processor() or platform.machine()} CPU, torch {torch.__version__}"


def output_file(parser, path) -> Path:  # noqa: ANN001 - an argparse parser, a str or Path
    """Where a benchmark writes its figures, its folder made before the benchmark's work starts: a folder
    that cannot be made is an error now (``parser.error``: exit 2, one line), not after an hour of work."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"{out}: cannot create its folder {out.parent}: {e.strerror or e}")
    if out.is_dir():
        parser.error(f"{out} is a folder: give a file name for the figures (.json)")
    return out
