"""The backbone weights: fetched from a loopback mirror (written whole or not at all, the SHA-256 prefix
in torchvision's file name checked), checked by `python -m egomodel.weights check`, by build_resnet,
and on every node of a one-node Ray before a search."""

from __future__ import annotations

import hashlib
import io
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from egomodel import weights
from egomodel.model import backbone, imagenet
from egomodel.model.backbone import WeightsError, build_resnet


def _backbone(monkeypatch: pytest.MonkeyPatch, key: str, url: str) -> None:
    """A backbone of the tests' own: its constructor for build_resnet, its URL for the fetch and the check."""
    monkeypatch.setitem(backbone.BACKBONES, key, (resnet18, url))
    monkeypatch.setitem(imagenet.WEIGHT_URLS, key, url)


def tiny_file() -> tuple[str, bytes]:
    """A small state dict and torchvision's kind of name for it: NAME-<its SHA-256 prefix>.pth."""
    buf = io.BytesIO()
    torch.save({"w": torch.arange(2000, dtype=torch.float32)}, buf)
    data = buf.getvalue()
    return f"tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth", data


class Mirror:
    """A loopback HTTP server: ``files`` maps a path to (body, declared length); ``hold`` pauses a body
    half-way until released."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, int]] = {}
        self.hold = threading.Event()
        self.hold.set()
        self.requests = 0
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                mirror.requests += 1
                if self.path not in mirror.files:
                    self.send_error(404)
                    return
                body, length = mirror.files[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                mirror.hold.wait(10)
                self.wfile.write(body[len(body) // 2:])

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    m = Mirror()
    yield m
    m.hold.set()
    m.server.shutdown()
    m.server.server_close()


def test_a_good_file_is_written_whole_and_only_once(mirror: Mirror, tmp_path: Path) -> None:
    name, data = tiny_file()
    mirror.files[f"/{name}"] = (data, len(data))
    mirror.hold.clear()  # the server stops half-way: the destination must not hold a partial file by that name
    dest = tmp_path / "checkpoints"
    result: list = []
    fetching = threading.Thread(target=lambda: result.append(weights.fetch_file(mirror.url, name, dest, False)))
    fetching.start()
    deadline = time.monotonic() + 10
    while not list(dest.glob("*.partial")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(dest.glob("*.partial")) and not (dest / name).exists()
    mirror.hold.set()
    fetching.join(10)
    assert result == [(dest / name, True)]
    assert sorted(p.name for p in dest.iterdir()) == [name] and (dest / name).read_bytes() == data
    assert torch.equal(torch.load(dest / name, weights_only=True)["w"], torch.arange(2000, dtype=torch.float32))
    # present and intact: not downloaded again; a full URL (ending in the file name) works as well
    assert weights.fetch_file(mirror.url + name, name, dest) == (dest / name, False) and mirror.requests == 1


@pytest.mark.parametrize("damage", ["wrong_hash", "truncated"])
def test_a_bad_file_is_refused_and_nothing_is_left(mirror: Mirror, tmp_path: Path, damage: str) -> None:
    name, data = tiny_file()
    if damage == "wrong_hash":
        mirror.files[f"/{name}"] = (data[:-1] + b"x", len(data))
    else:  # the connection closes after half the bytes it announced
        mirror.files[f"/{name}"] = (data[:len(data) // 2], len(data))
    dest = tmp_path / "checkpoints"
    with pytest.raises(WeightsError) as e:
        weights.fetch_file(mirror.url, name, dest, False)
    assert mirror.url + name in str(e.value) and weights.hash_prefix(name) in str(e.value)
    assert list(dest.iterdir()) == []


def test_an_unreachable_mirror_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name, _ = tiny_file()
    with pytest.raises(WeightsError, match=rf"cannot download http://127.0.0.1:{port}/{name} .*refused"):
        weights.fetch_file(f"http://127.0.0.1:{port}", name, tmp_path, False)
    assert list(tmp_path.iterdir()) == []


def test_from_a_folder_or_file_the_hash_is_checked(tmp_path: Path) -> None:
    name, data = tiny_file()
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / name).write_bytes(data)
    (tmp_path / "other.pth").write_bytes(data + b"tail")
    dest = tmp_path / "checkpoints"
    with pytest.raises(WeightsError, match=rf"other.pth is not the expected file.*expected {name[5:13]}"):
        weights.fetch_file(str(tmp_path / "other.pth"), name, dest)
    assert list(dest.iterdir()) == []
    assert weights.fetch_file(str(tmp_path / "mirror"), name, dest) == (dest / name, True)
    assert (dest / name).read_bytes() == data


def test_the_commands_fetch_and_check_the_cache(mirror: Mirror, tmp_path: Path, monkeypatch, capsys) -> None:
    """`fetch` and `check` on a backbone whose torchvision URL is the loopback mirror, with TORCH_HOME
    moving torch hub's cache."""
    name, data = tiny_file()
    mirror.files[f"/{name}"] = (data, len(data))
    _backbone(monkeypatch, "tiny", mirror.url + name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / name
    assert weights.main(["check", "--backbone", "tiny"]) == 1
    err = capsys.readouterr().err
    assert str(cached) in err and "python -m egomodel.weights fetch --backbone tiny" in err
    assert weights.main(["fetch", "--backbone", "tiny"]) == 0 and cached.read_bytes() == data
    assert weights.main(["check", "--backbone", "tiny"]) == 0 and "present and intact" in capsys.readouterr().out
    assert weights.main(["fetch", "--backbone", "tiny"]) == 0 and mirror.requests == 1
    assert "already present" in capsys.readouterr().out
    cached.write_bytes(data[:100])  # damaged on disk
    assert weights.main(["check", "--backbone", "tiny"]) == 1 and "damaged" in capsys.readouterr().err
    assert weights.main(["fetch", "--from", str(cached)]) == 2  # one file cannot be every backbone's
    assert "names one file" in capsys.readouterr().err


def test_build_resnet_refuses_a_damaged_file_and_names_the_fetch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = backbone.imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(resnet18().state_dict(), path)  # loads, but is not torchvision's file
    with pytest.raises(WeightsError, match=r"damaged.*python -m egomodel.weights fetch --backbone resnet18"):
        build_resnet("imagenet", "resnet18")


def test_a_trial_checks_before_it_trains(tmp_path: Path, monkeypatch) -> None:
    """A trial on a node without the weights (one an autoscaler launched after the search's check) fails
    at once, naming the node and the command, before its data or model are touched."""
    import ray._private.auto_init_hook

    from tuning.execution.trainable import TrialSetup, run_trial
    from tuning.space.types import Scheduler, SearchSpace

    monkeypatch.setattr(ray._private.auto_init_hook, "enable_auto_connect", False)  # no Ray here (gpu_check asks)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    space = SearchSpace(name="s", path=tmp_path, text="", metric="m", mode="max", num_samples=1,
                        max_concurrent=1, seed=0, resources={}, scheduler=Scheduler(),
                        base={"model.backbone": "resnet18", "train.device": "cpu"}, params=(), points=())
    setup = TrialSetup(space=space, data_root=str(tmp_path / "no-data"), seed=0)
    with pytest.raises(WeightsError, match=r"^node .*python -m egomodel.weights fetch --backbone resnet18"):
        run_trial({}, setup)


def test_every_node_is_checked_before_any_trial(tmp_path: Path, monkeypatch) -> None:
    """On a one-node Ray whose workers see TORCH_HOME: the search's needs (base config and searched
    backbones); absent names the node and the command, present passes; a path is looked for as is."""
    import ray

    from egomodel.config import from_dict
    from tuning.execution import weights_check
    from tuning.space.types import Param, Scheduler, SearchSpace

    space = SearchSpace(name="s", path=tmp_path, text="", metric="m", mode="max", num_samples=1,
                        max_concurrent=1, seed=0, resources={}, scheduler=Scheduler(), base={},
                        params=(Param("model.backbone", "categorical", choices=("resnet34", "resnet18")),),
                        points=())
    needs = weights_check.needed(from_dict({}, {}), space)
    assert [(b, n) for b, _, n in needs] == [("resnet18", "resnet18-f37072fd.pth"),
                                             ("resnet34", "resnet34-b627a593.pth")]
    assert weights_check.needed(from_dict({}, {"model.pretrained": "none"}), space) == []
    assert "none needed" in weights_check.check(from_dict({}, {"model.pretrained": "none"}), space, remote=True)

    name, data = tiny_file()
    home = tmp_path / "torch"
    needs = [("resnet18", "imagenet", name)]
    session = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths are at most 107 bytes
    monkeypatch.setenv("TORCH_HOME", str(home))  # the local Ray's workers inherit it
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=session)
    try:
        with pytest.raises(weights_check.WeightsCheckError) as e:
            weights_check.check_every_node(needs)
        msg = str(e.value)
        node = ray.get_runtime_context().get_node_id()
        assert f"node {ray.util.get_node_ip_address()} (Ray node {node})" in msg
        assert "python -m egomodel.weights fetch --backbone resnet18" in msg and str(home) in msg
        (home / "hub" / "checkpoints").mkdir(parents=True)
        (home / "hub" / "checkpoints" / name).write_bytes(data)
        assert weights_check.check_every_node(needs) == 1
        assert weights_check.check_every_node([("resnet18", str(home / "hub" / "checkpoints" / name), None)]) == 1
        with pytest.raises(weights_check.WeightsCheckError, match="model.pretrained=/no/such.pth: no such file"):
            weights_check.check_every_node([("resnet18", "/no/such.pth", None)])
    finally:
        ray.shutdown()
        shutil.rmtree(session, ignore_errors=True)


def test_the_worker_hook_fetches_what_is_missing_and_never_raises(tmp_path: Path, monkeypatch, capsys) -> None:
    """KubeRay's pods fetch in the job's environment (a Ray worker setup hook), from EGOSEARCH_WEIGHTS_FROM;
    a failure is printed, so the search's check, not a dead worker, reports it."""
    name, data = tiny_file()
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / name).write_bytes(data)
    for key in list(backbone.BACKBONES):
        monkeypatch.delitem(backbone.BACKBONES, key)
        monkeypatch.delitem(imagenet.WEIGHT_URLS, key)
    _backbone(monkeypatch, "tiny", "http://127.0.0.1:9/unused/" + name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(weights.FROM_ENV, str(tmp_path / "nowhere"))
    weights.fetch_on_worker_start()
    assert "cannot copy" in capsys.readouterr().err and weights.check_weights("tiny") is not None
    monkeypatch.setenv(weights.FROM_ENV, str(tmp_path / "mirror"))
    weights.fetch_on_worker_start()
    assert weights.check_weights("tiny") is None
