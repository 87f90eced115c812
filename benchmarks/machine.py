"""The machine a figure was measured on, in one line (shared by the benchmark commands)."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
