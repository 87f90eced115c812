"""The CUDA stack, checked rather than assumed.

Two places ask the same question, "does PyTorch see the GPU this machine has?":

* a node's setup (``python -m tuning.execution.gpu_check``, run by the cluster files after the
  install): on a machine with an NVIDIA PCI device, the setup fails with the driver and CUDA versions
  when ``torch.cuda.is_available()`` is false; a machine without one (the CPU head) passes;
* each trial, before it trains (:func:`check_trial`): a trial that Ray gave a GPU but that PyTorch
  cannot use fails at once, instead of training on the CPU at a fraction of the speed while the GPU
  it reserved stays idle.

torch 2.14.1's CUDA wheel is built for CUDA 13.0, which needs an NVIDIA driver of the 580 series or
newer: an older driver is the usual cause.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# Tests only: Ray's autoscaling simulator declares GPUs that do not exist. With this set to 1 in the
# trial's environment, a trial given such a GPU trains on the CPU instead of failing.
ALLOW_FAKE_GPU_ENV = "_EGOSEARCH_TEST_ALLOW_FAKE_GPU"
NVIDIA_PCI_VENDOR = "0x10de"
PCI_DEVICES = Path("/sys/bus/pci/devices")


class GpuError(RuntimeError):
    pass


def ray_gpu_ids() -> list[str]:
    """The GPUs Ray assigned to this worker (empty outside a Ray worker or without a GPU)."""
    try:
        import ray

        return [str(i) for i in ray.get_gpu_ids()]
    except Exception:  # noqa: BLE001 - not in a Ray worker: no GPU was assigned
        return []


def nvidia_pci_devices(root: Path = PCI_DEVICES) -> list[str]:
    """NVIDIA display/3D controllers on the PCI bus: present whether or not a driver is loaded."""
    found = []
    for dev in sorted(root.glob("*")) if root.is_dir() else []:
        try:
            vendor = (dev / "vendor").read_text().strip().lower()
            klass = (dev / "class").read_text().strip().lower()
        except OSError:
            continue
        if vendor == NVIDIA_PCI_VENDOR and klass.startswith("0x03"):  # 0x03xxxx: display controllers
            found.append(dev.name)
    return found


def _nvidia_smi() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi: not found (no NVIDIA driver installed?)"
    try:
        r = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi: could not run: {e}"
    out = (r.stdout.strip() or r.stderr.strip() or f"exit status {r.returncode}").splitlines()
    return "nvidia-smi: " + "; ".join(out[:4])


def stack_report() -> str:
    """One line naming PyTorch, the CUDA it was built for, the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES."""
    import torch

    return (f"torch {torch.__version__} built for CUDA {torch.version.cuda or 'none (a CPU-only build)'}; "
            f"{_nvidia_smi()}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_trial(device: str = "auto") -> None:
    """Raise :class:`GpuError` when Ray gave this trial a GPU that PyTorch cannot use (``device``: the
    trial's ``train.device``; ``cpu`` asks for the CPU on purpose and is not checked)."""
    ids = ray_gpu_ids()
    if not ids or device == "cpu" or cuda_available():
        return
    if os.environ.get(ALLOW_FAKE_GPU_ENV) == "1":
        return
    raise GpuError(
        f"Ray assigned GPU {', '.join(ids)} to this trial, but PyTorch cannot use a GPU on this node "
        f"({stack_report()}). The trial stops here rather than train on the CPU. Install an NVIDIA driver "
        "that supports this CUDA version (580 or newer for CUDA 13), or a torch build for the installed driver.")


def check_node() -> str:
    """The setup check of one node: a description when it passes; :class:`GpuError` when the node has an
    NVIDIA GPU that PyTorch cannot use."""
    gpus = nvidia_pci_devices()
    if not gpus:
        return "egosearch: no NVIDIA GPU on this node; nothing to check"
    if not cuda_available():
        raise GpuError(f"egosearch: this node has {len(gpus)} NVIDIA GPU(s) (PCI {', '.join(gpus)}) but "
                       f"torch.cuda.is_available() is false: {stack_report()}. Use an image whose NVIDIA driver "
                       "supports this CUDA version (580 or newer for CUDA 13).")
    import torch

    return f"egosearch: CUDA ok, {torch.cuda.device_count()} GPU(s) visible to PyTorch: {stack_report()}"


def main() -> int:
    try:
        print(check_node())
    except GpuError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
