"""The rehearsal: a user's four steps on a launcher-made cluster, with the commands docs/cluster.md shows.

`cluster-onprem.yaml` is brought up for real over SSH on loopback (tests/onprem_cluster.py: the head in its
own network, PID and mount namespaces; needs root), and the test then runs, from the document:

1. `ray up` (§2, §7) with `EGOSEARCH_WEIGHTS_FROM` in `cluster.env` (§1): the node's setup fetches the
   backbones' ImageNet weights from a loopback HTTP mirror with the file's own fetch command;
2. `ray exec ... python -m tuning.search --space ablation ... --address auto --storage ... --tracking-uri
   "$(cat ~/mlflow/tracking_uri)"` (§3, §7), made tiny with `--set` (2 trials, FIFO, a 64 px ResNet-18
   whose `model.pretrained` stays `imagenet`, a CPU each);
3. the best run found as §4 says: an SSH tunnel to the head's private address, the login exported, the
   champion read with the MLflow client by the Python block the document gives (run as written);
4. `ray exec ... python -m tuning.retrain --champion --model-name egosearch-ablation --seeds 2 ... --address
   auto --gpu 0` (§4, CPU cluster) and `ray exec ... python -m tuning.export --champion ...`, then
   `ray rsync-down` of the export, and `ray down` (§7).

The ImageNet weights. The shipped URL table stays torchvision's, and the real fetch path (download, SHA-256
prefix of torchvision's file name checked, atomic rename) and the search's per-node check are what this
walks, so the mirror serves files under torchvision's names that pass that check: genuine ResNet state
dicts whose last counter was chosen so the file's SHA-256 starts with the name's 8 hex digits
(tests/imagenet_standin.py). Serving a file that merely has the name would be refused by the fetch (and
so fail `ray up`), which is the point of the check; `model.pretrained=/path.pth` would not walk the fetch.

What the test changes from the document, and why: the cluster file's provider, auth and venv installs
(onprem_cluster.local_cluster_file); `cluster.env` is synced from the test's folder, not the repository
root (which other work shares); `ray exec` runs without `--tmux`, so the test waits for the command.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from egomodel.model.backbone import BACKBONES
from egomodel.model.imagenet import file_name, hash_prefix
from tests import onprem_cluster
from tests.imagenet_standin import NONCES, standin_bytes
from tests.onprem_cluster import BIN, HEAD_ADDRESS, REPO, Head, checkout, local_cluster_file, tail

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
key, head_raytmp, head = onprem_cluster.key, onprem_cluster.head_raytmp, onprem_cluster.head  # the fixtures

MODEL = "egosearch-ablation"  # what `--space ablation` registers, and the name docs/cluster.md uses
MIRROR_PORT = 8088  # in the head's network namespace: its ports are its own
TUNNEL_PORT = 5000  # `ssh -N -L 5000:HEAD_IP:5000`, per docs/cluster.md §7
TINY = ("resources.cpu=1", "resources.gpu=0", "num_samples=2", "max_concurrent=2", "scheduler.type=fifo",
        "model.backbone=resnet18", "model.pretrained=imagenet", "model.hidden=32", "data.image_size=64",
        "data.frames=3", "data.num_workers=0", "train.epochs_scale=0.005", "train.eval_batch_size=16")
EPOCHS_SCALE = "0.005"  # retrain's schedule: the search's, not the full one


def doc_python_block(heading: str) -> str:
    """The first ```python block after ``heading`` in docs/cluster.md."""
    text = (REPO / "docs" / "cluster.md").read_text()
    found = re.search(re.escape(heading) + r".*?```python\n(.*?)```", text, re.S)
    assert found, f"docs/cluster.md: no python block after {heading!r}"
    return found.group(1)


def wait_for_port(h: Head, port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 60
    while h.run(["bash", "-c", f"echo > /dev/tcp/127.0.0.1/{port}"], "port_wait.log", 10).returncode != 0:
        assert proc.poll() is None and time.time() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.5)


@pytest.fixture
def mirror(tmp_path: Path, head: Head):
    """An http.server in the head's network namespace serving the stand-ins under torchvision's names; its
    URL and the file holding its access log."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for backbone, nonce in NONCES.items():
        data, name = standin_bytes(backbone, nonce), file_name(backbone)
        assert hashlib.sha256(data).hexdigest().startswith(hash_prefix(name)), f"{name}: the stand-in does not match"
        (folder / name).write_bytes(data)
    log = tmp_path / "mirror.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*head.netns, sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                 "--directory", str(folder), str(MIRROR_PORT)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(head, MIRROR_PORT, proc, log)
        yield f"http://127.0.0.1:{MIRROR_PORT}/", log
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(folder)


def test_the_users_four_steps_on_an_onprem_cluster(tmp_path: Path, key: Path, head: Head, mirror: tuple[str, Path],
                                                   tiny_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home, (mirror_url, mirror_log) = head.home, mirror
    (tmp_path / "cluster.env").write_text(f"EGOSEARCH_WEIGHTS_FROM={mirror_url}\n")
    cfg = str(local_cluster_file(tmp_path, key, cluster_env=tmp_path / "cluster.env"))
    if set(NONCES) != set(BACKBONES):  # only some stand-ins made: the setup fetches those (all by default)
        text = Path(cfg).read_text()
        assert text.count("fetch --backbone all") == 1
        Path(cfg).write_text(text.replace("fetch --backbone all", f"fetch --backbone {' '.join(NONCES)}"))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_TMPDIR": str(tmp_path / "launcher-raytmp")}  # the launcher's state file, apart from other Rays
    env.pop("RAY_ADDRESS", None)
    ray = str(BIN / "ray")
    repo = checkout(tmp_path / "egosearch")  # the user's clone, where ray up runs
    shared = tmp_path / "shared"  # the "NFS mount" of §7: every node (here the head) sees it at this path
    shared.mkdir()
    timings: dict[str, float] = {}

    def ray_exec(command: str, log: str, timeout: float) -> subprocess.CompletedProcess[str]:
        t0 = time.time()
        proc = head.run([ray, "exec", cfg, command], log, timeout, env)
        timings[log.removesuffix(".log")] = time.time() - t0
        return proc

    tunnel = None
    try:
        # 1. ray up: the setup fetches the weights from the mirror (cluster.env's EGOSEARCH_WEIGHTS_FROM)
        t0 = time.time()
        up = head.run([ray, "up", "-y", "--no-config-cache", cfg], "ray_up.log", 1200, env, cwd=repo)
        timings["ray up"] = time.time() - t0
        assert up.returncode == 0, tail(up)
        cache = home / ".cache" / "torch" / "hub" / "checkpoints"
        for name in (mirror_log.parent / "mirror").iterdir():
            assert (cache / name.name).read_bytes() == name.read_bytes(), f"{name.name} not fetched onto the head"
            assert f"GET /{name.name} HTTP/1.1\" 200" in mirror_log.read_text()
        assert not [p for p in cache.iterdir() if p.name.endswith(".partial")]
        tracking_uri = (home / "mlflow" / "tracking_uri").read_text().strip()
        assert tracking_uri == f"http://{HEAD_ADDRESS}:5000"

        # 2. the search, as §3/§7 write it (without --tmux), made tiny with --set
        sets = " ".join(f"--set {s}" for s in TINY)
        search = ray_exec(f"cd ~/egosearch && python -m tuning.search --space ablation --data {tiny_root} "
                          f"--address auto --storage {shared}/ray_results "
                          f"--tracking-uri \"$(cat ~/mlflow/tracking_uri)\" {sets}", "search.log", 2400)
        assert search.returncode == 0, tail(search)
        out = search.stdout + search.stderr
        assert "backbone weights resnet18 ImageNet (resnet18-f37072fd.pth): present and intact on all 1 node" in out

        store = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")  # the head's store, read only
        exp = store.get_experiment_by_name("ablation")
        runs = store.search_runs([exp.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.run_name, r.info.status)
                                                                             for r in parents]
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
        assert {r.data.params["model.pretrained"] for r in trials} == {"imagenet"}
        best_run_id = parents[0].data.tags["best_run_id"]

        # 3. the best run, found as §4 says: tunnel, login exported, the document's Python block
        tunnel_log = tmp_path / "tunnel.log"
        with tunnel_log.open("w") as f:
            tunnel = subprocess.Popen([*head.netns, "ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no",
                                       "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-N",
                                       "-L", f"{TUNNEL_PORT}:{HEAD_ADDRESS}:5000", "root@127.0.0.1"],
                                      stdout=f, stderr=subprocess.STDOUT)
        wait_for_port(head, TUNNEL_PORT, tunnel, tunnel_log)
        password = ray_exec("cat ~/mlflow/admin_password", "admin_password.log", 300)
        client_env = {**env, "MLFLOW_TRACKING_URI": f"http://localhost:{TUNNEL_PORT}",
                      "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password.stdout.strip()
                      .splitlines()[-1]}
        found = head.run([sys.executable, "-c", doc_python_block("**The best run**")], "best_run.log", 300,
                         client_env)
        assert found.returncode == 0, tail(found)
        assert best_run_id in found.stdout.split(), tail(found)
        best = store.get_run(best_run_id)
        assert best.data.metrics["best_val_top1"] == max(r.data.metrics["best_val_top1"] for r in trials)

        # 4. retrain on the cluster (CPU: --gpu 0), then export, then bring the export home
        retrain = ray_exec(f"cd ~/egosearch && python -m tuning.retrain --champion --model-name {MODEL} --seeds 2 "
                           f"--data {tiny_root} --address auto --gpu 0 --epochs-scale {EPOCHS_SCALE} "
                           "--tracking-uri \"$(cat ~/mlflow/tracking_uri)\"", "retrain.log", 2400)
        assert retrain.returncode == 0, tail(retrain)
        runs = store.search_runs([exp.experiment_id], f"tags.retrain_of = '{best_run_id}'")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED", tail(retrain)
        assert runs[0].info.run_name == f"retrain-{best.info.run_name}"
        seeds = store.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{runs[0].info.run_id}'")
        assert len(seeds) == 2 and len({r.data.tags["retrain_seed"] for r in seeds}) == 2
        assert {r.info.status for r in seeds} == {"FINISHED"} and all("test_top1" in r.data.metrics for r in seeds)
        assert runs[0].data.params["data.root"] == str(tiny_root)

        export = ray_exec(f"cd ~/egosearch && python -m tuning.export --champion --model-name {MODEL} "
                          f"--data {tiny_root} --out ~/export-ablation "
                          "--tracking-uri \"$(cat ~/mlflow/tracking_uri)\"", "export.log", 1200)
        assert export.returncode == 0, tail(export)
        down_to = tmp_path / "export-ablation"
        rsync = head.run([ray, "rsync-down", cfg, f"{home}/export-ablation/", f"{down_to}/"], "rsync_down.log", 300,
                         env, cwd=repo)
        assert rsync.returncode == 0, tail(rsync)
        assert (down_to / "model.onnx").stat().st_size > 0
        parity = json.loads((down_to / "parity.json").read_text())
        assert parity["passed"] and parity["top1_agreement"] == 1.0, parity
        assert store.get_run(best_run_id).data.tags["egosearch.export"] == "onnx"

        t0 = time.time()
        down = head.run([ray, "down", "-y", cfg], "ray_down.log", 600, env)
        timings["ray down"] = time.time() - t0
        assert down.returncode == 0, tail(down)
    finally:
        if tunnel is not None:
            tunnel.terminate()
            tunnel.wait()
        head.ssh(f"RAY_TMPDIR={head.raytmp} {BIN / 'ray'} stop --force; kill -- -$(cat ~/mlflow/server.pid); true",
                 "ray_stop.log")
        for heavy in (shared, home / "mlflow" / "artifacts", home / ".cache"):
            shutil.rmtree(heavy, ignore_errors=True)
        with capsys.disabled():
            print(f"\n[test_rehearsal] {', '.join(f'{k}: {v:.0f} s' for k, v in timings.items())}; "
                  f"logs in {head.logs}")
