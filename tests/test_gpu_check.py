"""The CUDA stack check (tuning.execution.gpu_check), without a GPU: Ray's GPU ids, torch's view of
CUDA and the PCI bus are replaced by what each case needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tuning.execution import gpu_check


@pytest.fixture
def given(monkeypatch: pytest.MonkeyPatch):
    def set_(ids: list[str], cuda: bool) -> None:
        monkeypatch.setattr(gpu_check, "ray_gpu_ids", lambda: ids)
        monkeypatch.setattr(gpu_check, "cuda_available", lambda: cuda)
        monkeypatch.delenv(gpu_check.ALLOW_FAKE_GPU_ENV, raising=False)
    return set_


def test_trial_with_a_gpu_torch_cannot_see_fails_naming_the_stack(given) -> None:
    import torch

    given(["0"], cuda=False)
    with pytest.raises(gpu_check.GpuError) as e:
        gpu_check.check_trial("auto")
    msg = str(e.value)
    assert "Ray assigned GPU 0" in msg and "PyTorch cannot use a GPU" in msg
    assert f"torch {torch.__version__}" in msg and "built for CUDA" in msg
    assert "nvidia-smi" in msg and "CUDA_VISIBLE_DEVICES" in msg


@pytest.mark.parametrize(("ids", "cuda", "device"), [
    ([], False, "auto"),  # no GPU from Ray: a CPU trial
    (["0"], True, "auto"),  # the GPU is usable
    (["0"], False, "cpu"),  # the space asks for the CPU on purpose
])
def test_trial_passes(given, ids: list[str], cuda: bool, device: str) -> None:
    given(ids, cuda)
    gpu_check.check_trial(device)


def test_test_switch_allows_fake_gpus(given, monkeypatch: pytest.MonkeyPatch) -> None:
    given(["1"], cuda=False)
    monkeypatch.setenv(gpu_check.ALLOW_FAKE_GPU_ENV, "1")
    gpu_check.check_trial("auto")


def _pci(root: Path, name: str, vendor: str, klass: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "vendor").write_text(vendor + "\n")
    (root / name / "class").write_text(klass + "\n")


def test_nvidia_gpus_found_on_the_pci_bus(tmp_path: Path) -> None:
    _pci(tmp_path, "0000:00:1e.0", "0x10de", "0x030200")  # an NVIDIA 3D controller (A10G, ...)
    _pci(tmp_path, "0000:00:1f.0", "0x10de", "0x040300")  # an NVIDIA audio function: not a GPU
    _pci(tmp_path, "0000:00:02.0", "0x1d0f", "0x030000")  # another vendor's display controller
    assert gpu_check.nvidia_pci_devices(tmp_path) == ["0000:00:1e.0"]
    assert gpu_check.nvidia_pci_devices(tmp_path / "missing") == []


def test_node_setup_check(given, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(gpu_check, "nvidia_pci_devices", lambda: ["0000:00:1e.0"])
    given([], cuda=False)
    assert gpu_check.main() == 1
    err = capsys.readouterr().err
    assert "1 NVIDIA GPU(s)" in err and "torch.cuda.is_available() is false" in err and "built for CUDA" in err
    monkeypatch.setattr(gpu_check, "nvidia_pci_devices", lambda: [])
    assert gpu_check.main() == 0
    assert "no NVIDIA GPU on this node" in capsys.readouterr().out


def test_node_setup_check_runs_as_a_module_on_this_cpu_machine() -> None:
    """What the cluster files run after the install: on a machine without an NVIDIA GPU it passes."""
    if gpu_check.nvidia_pci_devices():
        pytest.skip("this machine has an NVIDIA GPU")
    r = subprocess.run([sys.executable, "-m", "tuning.execution.gpu_check"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "no NVIDIA GPU" in r.stdout
