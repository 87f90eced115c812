"""A head for `cluster-onprem.yaml`, brought up for real against this machine over SSH on loopback (the
fixtures `key`, `head_raytmp` and `head`, the class `Head`, and `local_cluster_file`), shared by
tests/test_onprem_e2e.py and tests/test_rehearsal.py.

A test using it needs root: it installs openssh-server, rsync and iproute2 with apt-get when missing and
runs its own sshd on 127.0.0.1:22 (Ray's `auth` has no port setting), logging in as root with a key
it makes. That sshd runs in new network, PID and mount namespaces (`unshare`), and so does the whole
head it starts:

* network: the head's ports (22, Ray's 6379, 8265 and 10001, MLflow's 5000) are its own, so neither
  an sshd nor another Ray on the machine is in the way; a veth interface (10.254.0.1) is the head's
  "private address" that the file binds MLflow to. The test runs `ray up`, `ray job` and `ssh`
  inside that network namespace (`nsenter --net`).
* PID: /proc shows only the head, so the file's `ray stop` and the test's `ray stop --force` reach
  only this cluster's processes, never another Ray on the machine.
* mount: /etc is a copy whose passwd gives root a home in a folder of the test, so the head's ~/egosearch,
  ~/mlflow, ~/.bashrc and ~/ray_bootstrap_* land there.

The cluster file is used as written except for what a local run must change: `provider` (head
127.0.0.1, no workers), `auth` (root and the test's key), and the setup commands that create a venv
and pip install torch, ray and the project, replaced by a link to the venv this test runs in (which
has them). The head's Ray start, the MLflow server and the other setup commands run as the file has
them.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ONPREM_FILE = REPO / "cluster-onprem.yaml"
VENV = Path(sys.prefix)
BIN = Path(sys.executable).parent
HEAD_ADDRESS = "10.254.0.1"  # the veth interface inside the head's network namespace


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

    def run(self, cmd: list[str], log: str, timeout: float, env: dict[str, str] | None = None,
            cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
        """`cmd` in the head's network namespace; its output goes to logs/`log`, partial on a timeout."""
        t0 = time.time()
        try:
            proc = subprocess.run([*self.netns, *cmd], cwd=cwd, env=env, capture_output=True, text=True,
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
    # a copy of the whole /etc, bound over /etc: binding files over /etc/passwd and /etc/shadow does not last,
    # since the kernel drops a mount whose file another namespace replaces (any useradd, apt's postinst included)
    etc = d / "etc"
    shutil.copytree("/etc", etc, symlinks=True, ignore_dangling_symlinks=True)
    passwd = [line.split(":") for line in Path("/etc/passwd").read_text().splitlines() if line]
    for fields in passwd:
        if fields[0] == "root":
            fields[5] = str(home)
    (etc / "passwd").write_text("".join(":".join(f) + "\n" for f in passwd))
    (etc / "passwd").chmod(0o644)
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")  # no password, not locked: key login only
    (etc / "shadow").chmod(0o600)
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
        f"mount --bind {etc} /etc",
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


def local_cluster_file(tmp_path: Path, key: Path, cluster_env: Path | None = None) -> Path:
    """cluster-onprem.yaml for the head on loopback. Its setup commands that make a venv and pip install
    torch, ray and the project become a link to the venv this test runs in; the others run as written: the
    ~/.bashrc wiring, the CUDA check, the shared-storage check, and the backbone weights' fetch when
    ``cluster_env`` is given (synced to ~/egosearch/cluster.env, where the file's commands read it, as the
    repository root's cluster.env would be; without it the fetch is left out, since nothing can be
    downloaded here)."""
    cfg = yaml.safe_load(ONPREM_FILE.read_text())
    cfg["cluster_name"] = "egosearch-onprem-e2e"
    cfg["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    cfg["min_workers"] = cfg["max_workers"] = 0
    cfg["auth"] = {"ssh_user": "root", "ssh_private_key": str(key)}
    setup = cfg["setup_commands"]
    assert "egosearch-venv/bin/activate" in setup[0] and "mountpoint" in setup[-1], "cluster-onprem.yaml changed"
    installs = [c for c in setup if "pip install" in c or "python3 -m venv" in c]
    fetch = [c for c in setup if "egomodel.weights fetch" in c]
    assert installs and len(fetch) == 1 and any("gpu_check" in c for c in setup), "cluster-onprem.yaml changed"
    link = f"ln -sfn {shlex.quote(str(VENV))} ~/egosearch-venv"
    cfg["setup_commands"] = [setup[0], link, *[c for c in setup[1:] if c not in installs
                                               and (cluster_env is not None or c not in fetch)]]
    if cluster_env is not None:
        cfg["file_mounts"]["~/egosearch/cluster.env"] = str(cluster_env)
    path = tmp_path / "cluster-onprem-local.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def checkout(dest: Path) -> Path:
    """The repository's tracked files as they are in the working tree, copied into ``dest``: what a user's
    clone holds, for `ray up` to sync (the working tree itself may hold large untracked outputs that other
    work writes and deletes while Ray hashes the file mounts)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest
