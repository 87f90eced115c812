"""`ray up cluster-onprem.yaml` for real, against this machine over SSH on loopback, then the smoke
search through `ray job submit`, then `ray down`.

The test needs root: it installs openssh-server, rsync and iproute2 with apt-get when missing and
runs its own sshd on 127.0.0.1:22 (Ray's `auth` has no port setting), logging in as root with a key
it makes. That sshd runs in new network, PID and mount namespaces (`unshare`), and so does the whole
head it starts:

* network: the head's ports (22, Ray's 6379, 8265 and 10001, MLflow's 5000) are its own, so neither
  an sshd nor another Ray on the machine is in the way; a veth interface (10.254.0.1) is the head's
  "private address" that the file binds MLflow to. The test runs `ray up`, `ray job` and `ssh`
  inside that network namespace (`nsenter --net`).
* PID: /proc shows only the head, so the file's `ray stop` and the test's `ray stop --force` reach
  only this cluster's processes, never another Ray on the machine.
* mount: /etc/passwd is a copy whose root home is a folder of the test, so the head's ~/egosearch,
  ~/mlflow, ~/.bashrc and ~/ray_bootstrap_* land there.

The cluster file is used as written except for what a local run must change: `provider` (head
127.0.0.1, no workers), `auth` (root and the test's key), and the setup commands that create a venv
and pip install torch, ray and the project, replaced by a link to the venv this test runs in (which
has them). The head's Ray start, the MLflow server and the other setup commands run as the file has
them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import TEST_BACKBONE
from tuning.space import SPACES_DIR

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
ONPREM_FILE = REPO / "cluster-onprem.yaml"
VENV = Path(sys.prefix)
BIN = Path(sys.executable).parent
HEAD_ADDRESS = "10.254.0.1"  # the veth interface inside the head's network namespace
DASHBOARD = "http://127.0.0.1:8265"  # what `ray dashboard` forwards to, per docs/cluster.md
EXPERIMENT = "onprem_e2e"
NUM_TRIALS = 2


def tail(proc: subprocess.CompletedProcess[str], n: int = 4000) -> str:
    return f"rc={proc.returncode}\n{proc.stdout[-n:]}\n--- stderr ---\n{proc.stderr[-n:]}"


def apt_install(binaries: dict[str, str]) -> None:
    """Install the Debian packages whose binaries are missing ({binary path: package})."""
    missing = sorted({pkg for path, pkg in binaries.items() if not os.access(path, os.X_OK)})
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-qq"],
                ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq", *missing]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{shlex.join(cmd)} failed:\n{tail(proc)}"


class Head:
    """The namespaces sshd runs in; runs commands in its network namespace and on it over SSH."""

    def __init__(self, unshare: subprocess.Popen, key: Path, home: Path, raytmp: Path, logs: Path) -> None:
        self.unshare, self.key, self.home, self.raytmp, self.logs = unshare, key, home, raytmp, logs
        # unshare moves itself into the new network namespace before it forks sshd
        self.netns = ["nsenter", f"--net=/proc/{unshare.pid}/ns/net", "--"]

    def run(self, cmd: list[str], log: str, timeout: float, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """`cmd` in the head's network namespace; its output goes to logs/`log`, partial on a timeout."""
        t0 = time.time()
        try:
            proc = subprocess.run([*self.netns, *cmd], cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
            proc = subprocess.CompletedProcess(cmd, -9, out, err + f"\n(timed out after {timeout} s)")
        (self.logs / log).write_text(f"$ {shlex.join(cmd)}\n# rc={proc.returncode} after {time.time() - t0:.1f}s\n"
                                     f"{proc.stdout}\n--- stderr ---\n{proc.stderr}")
        return proc

    def ssh(self, command: str, log: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A plain non-interactive SSH session on the head (no ~/.bashrc)."""
        options = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "IdentitiesOnly=yes", "BatchMode=yes",
                   "LogLevel=ERROR"]
        return self.run(["ssh", "-i", str(self.key), *[a for o in options for a in ("-o", o)], "root@127.0.0.1",
                         command], log, timeout)


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def key(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root: installs openssh-server and runs sshd in its own namespaces")
    if importlib.util.find_spec("flask_wtf") is None:  # the file's MLflow server runs the basic-auth app
        pytest.skip("MLflow's basic-auth app needs the mlflow[auth] extra (Flask-WTF), not installed here")
    apt_install({"/usr/sbin/sshd": "openssh-server", "/usr/bin/rsync": "rsync", "/usr/bin/ssh": "openssh-client",
                 "/usr/bin/ssh-keygen": "openssh-client", "/usr/sbin/ip": "iproute2", "/usr/bin/unshare": "util-linux",
                 "/usr/bin/nsenter": "util-linux"})
    private = tmp_path / "keys" / "id_ed25519"
    private.parent.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "egosearch-e2e", "-f", str(private)],
                   check=True)
    return private


@pytest.fixture
def head_raytmp():
    """The head's RAY_TMPDIR: short, since Ray's socket paths under it must stay within 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="egosearch-e2e-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def head(tmp_path: Path, key: Path, head_raytmp: Path):
    """sshd on 127.0.0.1:22 in new network, PID and mount namespaces, admitting root by the test's key
    only, with root's home a fresh folder (Debian's default dotfiles, the key authorized, RAY_TMPDIR set).
    On teardown sshd, the namespaces' first process, is killed: every process left in them ends with it."""
    home = tmp_path / "head-home"
    home.mkdir(mode=0o755)
    for name in (".bashrc", ".profile"):
        skel = Path("/etc/skel") / name
        (home / name).write_text(skel.read_text() if skel.exists() else "")
    with (home / ".bashrc").open("a") as f:
        f.write(f"\nexport RAY_TMPDIR={head_raytmp}\n")
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    (home / ".ssh" / "authorized_keys").chmod(0o600)

    d = tmp_path / "sshd"
    d.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    passwd = [line.split(":") for line in Path("/etc/passwd").read_text().splitlines() if line]
    for fields in passwd:
        if fields[0] == "root":
            fields[5] = str(home)
    (d / "passwd").write_text("".join(":".join(f) + "\n" for f in passwd))
    (d / "passwd").chmod(0o644)
    (d / "shadow").write_text("root:*:19000:0:99999:7:::\n")  # no password, not locked: key login only
    (d / "shadow").chmod(0o600)
    config = d / "sshd_config"
    config.write_text(
        "ListenAddress 127.0.0.1\nPort 22\n"
        f"HostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nPermitRootLogin prohibit-password\nAllowUsers root\nStrictModes yes\nX11Forwarding no\n"
        "Subsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # Debian's privilege-separation folder
    check = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    inside = " && ".join([
        "ip link set lo up",
        "ip link add egosearch0 type veth peer name egosearch1",  # a veth pair: no kernel module to load
        f"ip addr add {HEAD_ADDRESS}/24 dev egosearch0",
        "ip link set egosearch0 up",
        "ip link set egosearch1 up",
        "ip route add default dev egosearch0",
        f"mount --bind {d / 'passwd'} /etc/passwd",
        f"mount --bind {d / 'shadow'} /etc/shadow",
        f"exec /usr/sbin/sshd -D -f {config} -E {d / 'sshd.log'}",
    ])
    proc = subprocess.Popen(["unshare", "--net", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child=SIGKILL",
                             "bash", "-c", inside], start_new_session=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    h = Head(proc, key, home, head_raytmp, logs)
    try:
        deadline = time.time() + 30
        while h.run(["bash", "-c", "echo > /dev/tcp/127.0.0.1/22"], "sshd_wait.log", 10).returncode != 0:
            log = d / "sshd.log"
            assert proc.poll() is None and time.time() < deadline, log.read_text() if log.exists() else "no sshd log"
            time.sleep(0.3)
        yield h
    finally:
        proc.kill()  # unshare ignores SIGTERM; its SIGKILL reaches sshd through --kill-child
        proc.wait()


def local_cluster_file(tmp_path: Path, key: Path) -> Path:
    cfg = yaml.safe_load(ONPREM_FILE.read_text())
    cfg["cluster_name"] = "egosearch-onprem-e2e"
    cfg["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    cfg["min_workers"] = cfg["max_workers"] = 0
    cfg["auth"] = {"ssh_user": "root", "ssh_private_key": str(key)}
    setup = cfg["setup_commands"]
    # keep the file's own ~/.bashrc wiring and its shared-storage check; swap the venv creation and the
    # pip installs (torch, ray, the project) for a link to the venv this test runs in
    assert "egosearch-venv/bin/activate" in setup[0] and "mountpoint" in setup[-1], "cluster-onprem.yaml changed"
    assert any("pip install" in c for c in setup[1:-1])
    cfg["setup_commands"] = [setup[0], f"ln -sfn {shlex.quote(str(VENV))} ~/egosearch-venv", setup[-1]]
    path = tmp_path / "cluster-onprem-local.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------------


def test_ray_up_job_submit_and_ray_down_on_this_machine(tmp_path: Path, key: Path, head: Head, tiny_root: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    home = head.home
    cfg = local_cluster_file(tmp_path, key)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_TMPDIR": str(tmp_path / "launcher-raytmp")}  # the launcher's state file, apart from other Rays
    env.pop("RAY_ADDRESS", None)
    ray = str(BIN / "ray")
    timings: dict[str, float] = {}

    space = yaml.safe_load((SPACES_DIR / "smoke.yaml").read_text())
    # 2/1/1 epochs: too short for ASHA's stage-aware rungs, and this test is about the cluster, not the scheduler
    space.update(name=EXPERIMENT, num_samples=NUM_TRIALS, max_concurrent=2, scheduler={"type": "fifo"})
    space["base"].update({"train.epochs_scale": 0.005, "train.eval_batch_size": 32, **TEST_BACKBONE})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = tmp_path / "ray_results"

    try:
        t0 = time.time()
        up = head.run([ray, "up", "-y", "--no-config-cache", str(cfg)], "ray_up.log", 900, env)
        timings["ray up"] = time.time() - t0
        assert up.returncode == 0, tail(up)

        # the head's setup ran as the file says: repository synced, venv wired into ~/.bashrc, MLflow
        # on the head's private address (not loopback) and answering
        assert (home / "egosearch" / "cluster-onprem.yaml").exists(), "file_mounts did not sync the repository"
        assert not (home / "egosearch" / ".git").exists() and not (home / "egosearch" / ".venv").exists()
        assert "egosearch-venv/bin/activate" in (home / ".bashrc").read_text()
        tracking_uri = (home / "mlflow" / "tracking_uri").read_text().strip()
        assert tracking_uri == f"http://{HEAD_ADDRESS}:5000"
        health = head.run([sys.executable, "-c", "import sys, urllib.request; urllib.request.urlopen(sys.argv[1])",
                           f"{tracking_uri}/health"], "mlflow_health.log", 30)
        assert health.returncode == 0, tail(health)
        status = head.run([ray, "exec", str(cfg), "ray status"], "ray_status.log", 300, env)
        assert status.returncode == 0 and "Active:" in status.stdout, tail(status)

        job_id = f"egosearch-e2e-{int(time.time())}"
        t0 = time.time()
        submit = head.run([ray, "job", "submit", "--address", DASHBOARD, "--submission-id", job_id,
                           "--working-dir", ".", "--",
                           "python", "-m", "tuning.search", "--space", str(tmp_path / "space.yaml"),
                           "--data", str(tiny_root), "--address", "auto", "--storage", str(storage),
                           "--tracking-uri", tracking_uri], "ray_job_submit.log", 1200, env)
        timings["ray job submit"] = time.time() - t0
        job = head.run([sys.executable, "-c", "import sys; from ray.job_submission import JobSubmissionClient as C; "
                        "print('STATUS=' + C(sys.argv[1]).get_job_status(sys.argv[2]).value)", DASHBOARD, job_id],
                       "ray_job_status.log", 120, env)
        assert "STATUS=SUCCEEDED" in job.stdout, f"{tail(job)}\n--- submit ---\n{tail(submit)}"
        assert submit.returncode == 0, tail(submit)

        # the search ran on this cluster: its Tune storage, and its runs in the head's MLflow store
        results = list((storage / EXPERIMENT).glob("*/result.json"))
        assert len(results) == NUM_TRIALS
        for result in results:  # trials ran on the head node the launcher started
            assert {json.loads(line)["node_ip"] for line in result.read_text().splitlines()} == {HEAD_ADDRESS}
        client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
        exp = client.get_experiment_by_name(EXPERIMENT)
        assert exp is not None, f"no experiment {EXPERIMENT} in the head's MLflow store"
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        assert len(children) == NUM_TRIALS
        assert {r.data.tags.get("egosearch.outcome") for r in children} <= {"completed", "early_stopped"}
        champion = client.get_model_version_by_alias(f"egosearch-{EXPERIMENT}", "champion")
        assert champion.run_id == parents[0].data.tags["best_run_id"]

        t0 = time.time()
        down = head.run([ray, "down", "-y", str(cfg)], "ray_down.log", 600, env)
        timings["ray down"] = time.time() - t0
        assert down.returncode == 0, tail(down)
        # docs/cluster.md: `ray down` stops Ray on the machines (they stay on)
        ps = head.ssh("ps -e -o comm=", "processes_after_ray_down.log")
        assert ps.returncode == 0 and "sshd" in ps.stdout, tail(ps)
        left = {"raylet", "gcs_server"} & set(ps.stdout.split())
        assert not left, f"Ray still running on the head after `ray down`: {left}"
        shutil.rmtree(storage)  # checkpoints and the stage store: GBs, even for this search
        shutil.rmtree(home / "mlflow" / "artifacts")
    finally:
        # stop whatever is left on the head (Ray if `ray down` did not, the MLflow server, which the file
        # starts and nothing stops); the head fixture then ends anything else in its namespaces
        head.ssh(f"RAY_TMPDIR={head.raytmp} {BIN / 'ray'} stop --force; kill -- -$(cat ~/mlflow/server.pid); true",
                 "ray_stop.log")
        with capsys.disabled():
            print(f"\n[test_onprem_e2e] {', '.join(f'{k}: {v:.0f} s' for k, v in timings.items())}; "
                  f"logs in {head.logs}")
