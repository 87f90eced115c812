"""The Ray cluster-launcher files (cluster.yaml, cluster-onprem.yaml), checked offline.

Validation uses Ray's own code, the two steps `ray up` runs before it touches a cloud:
`ray.autoscaler._private.util.prepare_config` (merges the provider's defaults.yaml, merges
setup_commands into head/worker setup, fills per-type min/max workers; for `provider: local` it also
builds the single internal node type and rejects `available_node_types`) and `validate_config`
(jsonschema against ray/autoscaler/ray-schema.json, plus the node-type checks). Neither needs AWS:
the AWS-specific steps of `ray up` (`fillout_available_node_types_resources`, `bootstrap_config`:
IAM, subnets, key pairs, AMIs) come after them and are not called here. To prove it, every test runs
with sockets blocked, boto3's entry points replaced by failures and the AWS credential chain
pointed at nothing.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

ray = pytest.importorskip("ray")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AWS_FILE = ROOT / "cluster.yaml"
ONPREM_FILE = ROOT / "cluster-onprem.yaml"
CLUSTER_FILES = [AWS_FILE, ONPREM_FILE]

TORCH_PIN = "torch==2.14.1"
TORCHVISION_PIN = "torchvision==0.29.1"
MLFLOW_PORT = "5000"


# --------------------------------------------------------------------------------------------------
# offline guard


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and no AWS credentials while these tests run."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network or cloud access attempted in an offline test: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    try:
        import boto3
    except ImportError:  # pragma: no cover - boto3 is optional for this test
        return
    monkeypatch.setattr(boto3, "client", refuse)
    monkeypatch.setattr(boto3, "resource", refuse)
    monkeypatch.setattr(boto3, "Session", refuse)
    monkeypatch.setattr(boto3.session, "Session", refuse)


# --------------------------------------------------------------------------------------------------
# helpers


def load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        cfg = yaml.safe_load(f)
    assert isinstance(cfg, dict), f"{path.name} is not a YAML mapping"
    return cfg


def prepared(path: Path) -> dict[str, Any]:
    """What `ray up` validates: prepare_config then validate_config (raises on a bad file)."""
    cfg = prepare_config(copy.deepcopy(load(path)))
    validate_config(cfg)
    return cfg


def all_commands(cfg: dict[str, Any]) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    cmds = [c for k in keys for c in cfg.get(k) or []]
    for node_type in (cfg.get("available_node_types") or {}).values():
        for k in ("initialization_commands", "worker_setup_commands"):
            cmds += node_type.get(k) or []
    return cmds


def mlflow_command(cfg: dict[str, Any]) -> str:
    found = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    assert len(found) == 1, "exactly one head start command must start the MLflow server"
    return found[0]


def worker_types(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


# --------------------------------------------------------------------------------------------------
# Ray's own schema


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_file_passes_rays_prepare_and_validate(path: Path) -> None:
    cfg = prepared(path)
    assert cfg["cluster_name"]
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_validate_config_rejects_an_unknown_field() -> None:
    """The schema check is real: a misspelt top-level key fails."""
    cfg = prepare_config(copy.deepcopy(load(AWS_FILE)))
    cfg["idle_timeout_minute"] = 5
    with pytest.raises(Exception, match="idle_timeout_minute"):
        validate_config(cfg)


# --------------------------------------------------------------------------------------------------
# AWS file


def test_aws_head_has_no_gpu_and_workers_have_gpus() -> None:
    raw = load(AWS_FILE)
    assert raw["provider"]["type"] == "aws"
    cfg = prepared(AWS_FILE)
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head must advertise no GPU"
    assert head["resources"].get("CPU", 0) >= 2
    assert head["max_workers"] == 0
    assert not re.match(r"^(g|p|trn|inf|dl)\d", head["node_config"]["InstanceType"]), "head should be a CPU type"

    gpu_types = {k: v for k, v in worker_types(cfg).items() if v["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "a worker type must declare GPU resources"
    for name, node in gpu_types.items():
        raw_node = raw["available_node_types"][name]
        assert "min_workers" in raw_node and "max_workers" in raw_node, f"{name}: set min_workers/max_workers"
        assert 0 <= node["min_workers"] <= node["max_workers"]
        assert 1 <= node["max_workers"] <= cfg["max_workers"]
        assert node["node_config"]["InstanceType"]
    assert raw["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("space_file", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.stem)
def test_trials_pack_two_per_gpu_worker(space_file: Path) -> None:
    """A GPU space's trials fill the GPU workers: for each worker type with a GPU, floor(worker CPU /
    trial cpu) = floor(worker GPU / trial gpu) >= 2 (neither the CPUs nor the GPU left half idle), and the
    loader processes plus the trainer fit in the trial's CPUs."""
    space = yaml.safe_load(space_file.read_text())
    cpu, gpu = space["resources"]["cpu"], space["resources"].get("gpu", 0)
    if gpu == 0:
        pytest.skip(f"{space_file.name} runs on CPU")
    assert space["base"]["data.num_workers"] + 1 <= cpu, f"{space_file.name}: loaders + trainer exceed cpu {cpu}"
    cfg = prepared(AWS_FILE)
    gpu_types = {k: v["resources"] for k, v in worker_types(cfg).items() if v["resources"].get("GPU", 0) > 0}
    assert gpu_types
    for name, res in gpu_types.items():
        by_cpu, by_gpu = math.floor(res["CPU"] / cpu), math.floor(res["GPU"] / gpu)
        assert by_cpu == by_gpu >= 2, f"{name} ({res}) fits {by_cpu} trials by CPU and {by_gpu} by GPU"
    workers = sum(min(v["max_workers"], cfg["max_workers"]) for v in worker_types(cfg).values()
                  if v["resources"].get("GPU", 0) > 0)
    per_worker = min(math.floor(r["GPU"] / gpu) for r in gpu_types.values())
    assert space["max_concurrent"] <= workers * per_worker, "more concurrent trials than the workers can hold"


def test_aws_nodes_use_an_instance_profile_not_keys() -> None:
    cfg = load(AWS_FILE)
    for name, node in cfg["available_node_types"].items():
        profile = node["node_config"].get("IamInstanceProfile")
        assert profile, f"{name}: nodes reach S3 through an instance profile"
        assert set(profile) <= {"Name", "Arn"}
    auth = cfg.get("auth", {})
    if "ssh_private_key" in auth:
        assert auth["ssh_private_key"].startswith(("~", "/")), "ssh_private_key must be a path"


# --------------------------------------------------------------------------------------------------
# on-premise file


def test_onprem_is_a_local_provider_without_node_types() -> None:
    raw = load(ONPREM_FILE)
    assert raw["provider"]["type"] == "local"
    assert raw["provider"]["head_ip"]
    assert raw["provider"]["worker_ips"], "list the worker machines"
    assert "available_node_types" not in raw and "head_node_type" not in raw
    key = raw["auth"]["ssh_private_key"]
    assert key.startswith(("~", "/")) and "\n" not in key, "ssh_private_key must be a path, not a key"
    assert raw["auth"]["ssh_user"]
    text = ONPREM_FILE.read_text()
    assert "/mnt/shared/ray_results" in text and "NFS" in text, "document the shared storage path"


def test_local_provider_rejects_available_node_types() -> None:
    """docs/design.md §6: `provider: local` forbids available_node_types; Ray's own preparation says so."""
    cfg = load(ONPREM_FILE)
    cfg["available_node_types"] = {"gpu": {"node_config": {}, "resources": {"GPU": 1}}}
    with pytest.raises(Exception, match="not supported for on-premise"):
        prepare_config(cfg)


# --------------------------------------------------------------------------------------------------
# setup: the project and its pinned dependencies


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_setup_installs_project_and_pinned_torch(path: Path) -> None:
    raw = load(path)
    assert raw["file_mounts"].get("~/egosearch") == ".", "sync the repository to ~/egosearch"
    cfg = prepared(path)
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged into both
        text = "\n".join(cfg[key])
        assert TORCH_PIN in text and TORCHVISION_PIN in text, f"{key}: install the pinned torch/torchvision"
        assert re.search(r"pip install -e \S*egosearch\[tuning\]", text), f"{key}: install the project"
        assert f"ray[default,tune]=={ray.__version__}" in text, f"{key}: pin ray to the local ray {ray.__version__}"
        assert text.index(TORCH_PIN) < text.index("pip install -e"), "torch before the project"


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_pins_satisfy_the_project_requirements(path: Path) -> None:
    """Every `name==version` the setup installs is allowed by pyproject.toml, so the editable install
    that follows does not replace it."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    assert "tuning" in extras, "setup installs the [tuning] extra"
    wanted = {}
    for spec in project["dependencies"] + extras["tuning"]:
        req = Requirement(spec)
        wanted[canonicalize_name(req.name)] = req
    text = "\n".join(load(path)["setup_commands"])
    pins = re.findall(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([0-9][^\s'\"]*)", text)
    assert {canonicalize_name(n) for n, _ in pins} >= {"torch", "torchvision", "ray"}
    for name, version in pins:
        req = wanted.get(canonicalize_name(name))
        if req is not None:
            assert req.specifier.contains(version, prereleases=True), f"{name}=={version} vs pyproject {req}"


# --------------------------------------------------------------------------------------------------
# MLflow server on the head


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_mlflow_server_binds_the_private_ip_on_port_5000(path: Path) -> None:
    cfg = prepared(path)
    cmd = mlflow_command(cfg)
    host = re.search(r"--host[ =]+(\S+)", cmd)
    assert host, "mlflow server needs an explicit --host"
    var = re.fullmatch(r"\"?\$\{?(\w+)\}?\"?", host.group(1))
    assert var, f"--host must be the head's private IP (a shell variable), got {host.group(1)}"
    assignment = re.search(rf"\b{var.group(1)}=(\S+)", cmd)
    assert assignment and "hostname -I" in cmd[assignment.start() :], "the host comes from `hostname -I`"
    assert re.search(rf"--port[ =]+{MLFLOW_PORT}\b", cmd)
    assert "sqlite:///" in cmd and "$HOME/mlflow" in cmd
    assert "nohup" in cmd and cmd.rstrip().endswith("&"), "the server is backgrounded"
    assert not any("mlflow server" in c for c in cfg["worker_start_ray_commands"] + cfg["worker_setup_commands"])


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_nodes_run_trials_at_normal_priority(path: Path) -> None:
    """Every ``ray start`` sets RAY_worker_niceness=0, as local searches do (Ray's default is nice 15)."""
    cfg = prepared(path)
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    assert all(re.search(r"RAY_worker_niceness=0 ray start", c) for c in starts), starts


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_nothing_listens_on_all_interfaces(path: Path) -> None:
    for cmd in all_commands(prepared(path)):
        assert "0.0.0.0" not in cmd and not re.search(r"--(dashboard-)?host[ =]+\"?(::|\*)", cmd), cmd


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_every_command_is_valid_bash(path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not available")
    for cmd in all_commands(prepared(path)):
        result = subprocess.run([bash, "-n", "-c", cmd], capture_output=True, text=True)
        assert result.returncode == 0, f"{path.name}: bash syntax error {result.stderr}\n{cmd}"


# --------------------------------------------------------------------------------------------------
# no credentials anywhere in the repository

# Built from pieces so that this file does not match its own patterns.
KEY_SHAPES = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile("-----BEGIN " + r"(?:RSA |EC |DSA |OPENSSH )?PRIVATE KEY-----"),
]
SECRET_NAMES = [
    re.compile("aws_secret" + "_access_key"),  # the credentials-file / boto3 keyword
    re.compile("AWS_SECRET" + r"_ACCESS_KEY\s*[=:]\s*['\"]?[A-Za-z0-9/+]"),  # the env var, given a value
    re.compile("pass" + r"word\s*:", re.IGNORECASE),
]
CONFIG_SUFFIXES = {".py", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".json", ".sh", ".env"}
TEXT_SUFFIXES = CONFIG_SUFFIXES | {".md", ".txt", ".rst"}


def repo_files() -> list[Path]:
    """Files that are or would be committed: tracked plus untracked-but-not-ignored."""
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        out = subprocess.run(
            [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        paths = [ROOT / p for p in out.split("\0") if p]
    else:
        paths = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            paths += [Path(dirpath) / f for f in filenames]
    return [p for p in paths if p.is_file() and p.suffix in TEXT_SUFFIXES]


def test_no_credentials_in_repository_files() -> None:
    files = repo_files()
    assert AWS_FILE in files and ONPREM_FILE in files and Path(__file__).resolve() in files
    hits = []
    for path in files:
        if path.stat().st_size > 5_000_000:
            continue
        text = path.read_text(errors="replace")
        patterns = KEY_SHAPES + (SECRET_NAMES if path.suffix in CONFIG_SUFFIXES else [])
        for pattern in patterns:
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                hits.append(f"{path.relative_to(ROOT)}:{line}: {pattern.pattern}")
    assert not hits, "credential-looking strings:\n" + "\n".join(hits)


# --------------------------------------------------------------------------------------------------
# the MLflow start commands, actually run (slow: the server takes ~30-60 s to start on 2 cores)


def _listening(host: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0
    finally:
        s.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mlflow_start_commands_run_and_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the head's MLflow commands of cluster.yaml twice in a fake $HOME: bound to the private IP, not
    to 127.0.0.1, answering /health, the second run replaces the first server, and the API refuses a
    request without the admin login (401) and answers one with it."""
    monkeypatch.undo()  # this test needs local sockets
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's mlflow, unactivated
    if shutil.which("mlflow", path=path) is None or shutil.which("bash") is None:
        pytest.skip("mlflow CLI or bash not available")
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.skip("MLflow's basic-auth app needs the mlflow[auth] extra (Flask-WTF), not installed here")
    ips = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    ipv4 = [ip for ip in ips if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", ip)]
    if not ips or not ipv4 or ips[0] != ipv4[0] or ipv4[0].startswith("127."):
        pytest.skip("no non-loopback IPv4 address first in `hostname -I`")
    head_ip = ipv4[0]
    if _listening(head_ip, int(MLFLOW_PORT)):
        pytest.skip("port 5000 is busy")
    cfg = load(AWS_FILE)
    cmds = [c for c in cfg["head_start_ray_commands"] if "mlflow" in c]
    setup = [c for c in cfg["head_setup_commands"] if "mlflow" in c]  # the folder and the credentials
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGOSEARCH_")}
    env["HOME"] = str(tmp_path)
    env["PATH"] = path
    pidfile = tmp_path / "mlflow" / "server.pid"
    pids = []
    for cmd in setup:
        subprocess.run(["bash", "-c", cmd], env=env, check=True, timeout=60)
    try:
        for _ in range(2):
            for cmd in cmds:
                r = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=300)
                assert r.returncode == 0, r.stdout + r.stderr
            pids.append(int(pidfile.read_text()))
            assert (tmp_path / "mlflow" / "tracking_uri").read_text().strip() == f"http://{head_ip}:{MLFLOW_PORT}"
            assert _listening(head_ip, int(MLFLOW_PORT))
            assert not _listening("127.0.0.1", int(MLFLOW_PORT)), "must not listen on loopback/all interfaces"
        assert pids[0] != pids[1]
        # the basic-auth app: no login, 401; the head's admin login from its 0600 file, the API answers
        api = f"http://{head_ip}:{MLFLOW_PORT}/api/2.0/mlflow/experiments/search?max_results=1"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(api, timeout=10)
        assert refused.value.code == 401, refused.value.read()[:500]
        password = (tmp_path / "mlflow" / "admin_password").read_text().strip()
        login = base64.b64encode(f"admin:{password}".encode()).decode()
        with urllib.request.urlopen(urllib.request.Request(api, headers={"Authorization": f"Basic {login}"}),
                                    timeout=10) as r:
            assert r.status == 200
        time.sleep(1)
        with pytest.raises(ProcessLookupError):
            os.killpg(pids[0], 0)  # the first server's whole process group is gone
    finally:
        if pidfile.exists():
            try:
                os.killpg(int(pidfile.read_text()), 15)
            except ProcessLookupError:
                pass
