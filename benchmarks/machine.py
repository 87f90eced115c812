"""The machine a figure was measured on, in one line (shared by the benchmark commands)."""

from __future__ import annotations

import os
import platform


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
