"""Shared fixtures: a tiny synthetic GTEA61-layout data set and a tiny CPU config."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from egomodel.config import Config, from_dict
from egomodel.data.synthetic import generate

TINY = {
    "model.pretrained": "none",
    "model.hidden": 32,
    "data.image_size": 64,
    "data.frames": 3,
    "data.num_workers": 0,
    "train.epochs_scale": 0.005,
    "train.eval_batch_size": 16,
}


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 3 clips x 4 users, 6 frames of 48x40 (one class missing for S1)."""
    return generate(tmp_path_factory.mktemp("gtea"), classes=4, clips_per_class=3, frames=6, size=(48, 40), seed=0)


def tiny_config(root: Path, **overrides: object) -> Config:
    values = {**TINY, "data.root": str(root), **{k.replace("__", "."): v for k, v in overrides.items()}}
    return from_dict({}, values)


def kill_session(sid: int, timeout: float = 30) -> None:
    """SIGKILL every process of session ``sid``: a search driver started with ``start_new_session=True``
    and the local Ray it started. Ray's workers leave the driver's process group but keep its session,
    so this ends that Ray and no other (never ``ray stop``, which ends every Ray on the machine)."""

    def members() -> list[int]:
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
        return pids

    deadline = time.time() + timeout
    while (pids := members()) and time.time() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    assert not members(), f"processes of session {sid} survived SIGKILL: {members()}"


def per_class(csv_path: Path) -> dict[str, tuple[int, int]]:
    """``per_class_*.csv`` as {class: (clips, correct)}."""
    rows = [line.split(",") for line in csv_path.read_text().split()[1:]]
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def untrained_control(trained: str | Path, out: Path) -> dict[str, tuple[int, int]]:
    """The control of a learning test: the trained run's model at its initial weights (0 epochs, same
    seed), evaluated by ``egomodel.evaluate`` on the run's test users; {class: (clips, correct)}. A
    bound that this control also meets says nothing about learning."""
    from egomodel import checkpoint as ck
    from egomodel.evaluate import main as evaluate
    from egomodel.model import build_model

    saved = ck.load(trained)
    cfg = from_dict(saved["config"], {})
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, len(saved["classes"]))
    path = ck.save(out / "untrained.pt", {"model": model.state_dict(), "config": saved["config"],
                                          "classes": saved["classes"], "stage": 1, "epoch": 0})
    assert evaluate(["--checkpoint", str(path), "--data", cfg.data.root, "--out", str(out / "eval"),
                     "--device", "cpu"]) == 0
    return per_class(out / "eval" / "per_class.csv")
