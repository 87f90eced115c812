"""What the cluster files promise beyond Ray's schema (tests/test_cluster.py has the launcher-schema and
layout checks): the CUDA check and the backbone weights in the node setup, MLflow behind its basic-auth
app with credentials that never appear in a file, and the KubeRay RayJob running the same search as the
launcher clusters."""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_FILES = [ROOT / "cluster.yaml", ROOT / "cluster-onprem.yaml"]
RAYJOB_FILE = ROOT / "kuberay" / "rayjob.yaml"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"

# The search every cluster runs: one definition, checked against the documented launcher commands and
# the RayJob's entrypoint. Values that differ by platform (the storage location, the tracking URI) are
# checked for their kind, not their text.
SEARCH_MODULE = ["python", "-m", "tuning.search"]
SEARCH_FIXED = {"--space": "ablation", "--address": "auto"}
SEARCH_FLAGS = {*SEARCH_FIXED, "--data", "--storage", "--tracking-uri"}


def load(path: Path) -> dict[str, Any]:
    cfg = yaml.safe_load(path.read_text())
    assert isinstance(cfg, dict), f"{path.name} is not a YAML mapping"
    return cfg


def search_args(command: str) -> dict[str, str]:
    """The flags of the ``python -m tuning.search`` call in a shell command (``--resume``: "")."""
    words = shlex.split(command.replace("\\\n", " "))
    at = next(i for i in range(len(words)) if words[i:i + 3] == SEARCH_MODULE)
    args, rest = {}, words[at + 3:]
    while rest:
        flag = rest.pop(0)
        assert flag.startswith("--"), f"unexpected word {flag!r} in {command!r}"
        args[flag] = rest.pop(0) if rest and not rest[0].startswith("--") else ""
    return args


def documented_searches() -> list[str]:
    """The `ray exec ... 'cd ~/egosearch && python -m tuning.search ...'` commands of docs/cluster.md."""
    text = CLUSTER_DOC.read_text()
    found = re.findall(r"ray exec \S+ --tmux '(cd ~/egosearch && python -m tuning\.search.*?)'", text, re.DOTALL)
    assert len(found) >= 3, "docs/cluster.md shows the search on AWS, after a resume and on-premise"
    return found


def check_same_search(args: dict[str, str], where: str) -> None:
    assert set(args) - {"--resume"} == SEARCH_FLAGS, f"{where}: flags {sorted(args)}"
    for flag, value in SEARCH_FIXED.items():
        assert args[flag] == value, f"{where}: {flag} {args[flag]!r}, expected {value!r}"
    assert args["--data"].startswith("/") and args["--data"].endswith("/GTEA61"), f"{where}: --data {args['--data']}"
    assert re.fullmatch(r"(s3|gs)://\S+|/\S+", args["--storage"].replace('"', "")), f"{where}: --storage"


# --------------------------------------------------------------------------------------------------
# the CUDA stack


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_every_node_checks_that_torch_sees_its_gpu(path: Path) -> None:
    setup = load(path)["setup_commands"]  # run on every node, head and workers
    check = [i for i, c in enumerate(setup) if "-m tuning.execution.gpu_check" in c]
    install = [i for i, c in enumerate(setup) if "pip install -e" in c]
    assert len(check) == 1 and install and check[0] > install[0], "the check runs once, after the install"


# --------------------------------------------------------------------------------------------------
# the backbone weights


def fetch_argv(command: str, env: dict[str, str]) -> list[str]:
    """The arguments ``python -m egomodel.weights`` gets from a setup command, expanded by bash with ``env``
    (the command's python call replaced by a printf of its arguments)."""
    words = command.split("-m egomodel.weights", 1)[1]
    out = subprocess.run(["bash", "-c", f"printf '%s\\n' {words}"], env=env, capture_output=True, text=True,
                         check=True).stdout
    return out.splitlines()


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_every_node_fetches_the_backbone_weights(path: Path) -> None:
    """Each node's setup fetches both backbones' ImageNet weights after the install, from torchvision or
    from EGOSEARCH_WEIGHTS_FROM (cluster.env) when it is set; no node type overrides the setup without it."""
    from egomodel.weights import parser

    cfg = load(path)
    setup = cfg["setup_commands"]
    fetch = [i for i, c in enumerate(setup) if "-m egomodel.weights fetch" in c]
    install = [i for i, c in enumerate(setup) if "pip install -e" in c]
    assert len(fetch) == 1 and install and fetch[0] > install[0], "the fetch runs once, after the install"
    for name, node_type in cfg.get("available_node_types", {}).items():  # a node type's own setup replaces it
        own = node_type.get("worker_setup_commands", node_type.get("setup_commands"))
        assert own is None or any("egomodel.weights fetch" in c for c in own), name
    command = setup[fetch[0]]
    args = parser().parse_args(fetch_argv(command, {"PATH": "/usr/bin:/bin"}))
    assert (args.command, args.backbone, args.source) == ("fetch", "all", None)
    mirror = "s3://a bucket/weights/"
    args = parser().parse_args(fetch_argv(command, {"PATH": "/usr/bin:/bin", "EGOSEARCH_WEIGHTS_FROM": mirror}))
    assert args.source == mirror


def test_rayjob_pods_fetch_the_weights_in_the_jobs_environment() -> None:
    """On KubeRay the code exists only in the job's runtime environment: its worker setup hook fetches."""
    import importlib

    env = yaml.safe_load(load(RAYJOB_FILE)["spec"]["runtimeEnvYAML"])
    module, _, name = env["worker_process_setup_hook"].rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


def test_aws_image_is_a_pinned_dlami_line_with_a_recent_driver() -> None:
    cfg = load(ROOT / "cluster.yaml")
    images = {n["node_config"]["ImageId"] for n in cfg["available_node_types"].values()}
    assert len(images) == 1
    image = images.pop()
    assert image.startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/"), image
    assert "nvidia-driver" in image and "ubuntu-24.04" in image
    assert ">= 580" in (ROOT / "cluster.yaml").read_text(), "say which driver the image line must have"


# --------------------------------------------------------------------------------------------------
# MLflow behind basic auth


def mlflow_start(cfg: dict[str, Any]) -> str:
    found = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_mlflow_server_runs_the_basic_auth_app(path: Path) -> None:
    cfg = load(path)
    start = mlflow_start(cfg)
    assert re.search(r"exec mlflow server --app-name basic-auth\b", start)
    conf = re.search(r'MLFLOW_AUTH_CONFIG_PATH="(\$HOME/mlflow/[\w.]+)"', start)
    assert conf, "the auth app reads its own config file on the head"
    # its user database is its own, not the tracking store
    users = re.search(r"database_uri = (sqlite:///\S+)", start)
    assert users and "basic_auth.db" in users.group(1) and "mlflow.db" not in users.group(1)
    assert "umask 077" in start, "the config file is private to the head's user"
    assert 'MLFLOW_AUTH_ADMIN_PASSWORD="$(cat ~/mlflow/admin_password)"' in start
    assert 'MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat ~/mlflow/flask_secret)"' in start
    assert re.search(r"'mlflow\[auth\]==[\d.]+'", "\n".join(cfg["setup_commands"])), "install the auth extra"


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_credentials_are_made_on_the_head_and_reach_the_driver_by_environment(path: Path) -> None:
    cfg = load(path)
    made = [c for c in cfg["head_setup_commands"] if "admin_password" in c]
    elsewhere = cfg["setup_commands"] + cfg["worker_setup_commands"]
    assert len(made) == 1 and not any("admin_password" in c for c in elsewhere)
    cmd = made[0]
    assert "umask 077" in cmd and "chmod 600 ~/mlflow/admin_password" in cmd
    assert "secrets.token_urlsafe" in cmd and "[ -s ~/mlflow/admin_password ] ||" in cmd, "random, made once"
    login = 'export MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$(cat ~/mlflow/admin_password)"'
    assert login in cmd, "every shell on the head, the driver's included, gets the login from the file"


def test_the_credential_commands_run(tmp_path: Path) -> None:
    """The head's credential command in a fake $HOME: files made 0600 once, kept on a second run, and the
    login exported to a new shell from them."""
    cmd = next(c for c in load(ROOT / "cluster.yaml")["head_setup_commands"] if "admin_password" in c)
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    (tmp_path / "mlflow").mkdir()
    for _ in range(2):
        subprocess.run(["bash", "-c", cmd], env=env, check=True, timeout=60)
    pw = tmp_path / "mlflow" / "admin_password"
    assert (pw.stat().st_mode & 0o777) == 0o600 and ((tmp_path / "mlflow").stat().st_mode & 0o777) == 0o700
    assert len(pw.read_text().strip()) >= 24
    assert (tmp_path / ".bashrc").read_text().count("MLFLOW_TRACKING_USERNAME") == 1
    out = subprocess.run(["bash", "-c", '. ~/.bashrc; echo "$MLFLOW_TRACKING_USERNAME $MLFLOW_TRACKING_PASSWORD"'],
                         env=env, capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert out == ["admin", pw.read_text().strip()]


def test_the_auth_config_written_on_the_head_is_what_mlflow_reads(tmp_path: Path, monkeypatch) -> None:
    """The start command's auth config, written in a fake $HOME and read by MLflow's own reader (loaded
    from its file: the auth package itself needs the mlflow[auth] extra): user admin, its own user
    database beside the tracking store, the password from the environment, the file private."""
    import importlib.util

    import mlflow

    start = mlflow_start(load(ROOT / "cluster.yaml"))
    write = re.search(r'export MLFLOW_AUTH_CONFIG_PATH=[^;]+;\s*\(umask 077; printf .*?\);', start, re.DOTALL)
    assert write, "the start command writes the auth config"
    (tmp_path / "mlflow").mkdir()
    subprocess.run(["bash", "-c", write.group(0)], env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                   check=True, timeout=60)
    ini = tmp_path / "mlflow" / "basic_auth.ini"
    assert (ini.stat().st_mode & 0o777) == 0o600
    spec = importlib.util.spec_from_file_location(
        "mlflow_auth_config", Path(mlflow.__file__).parent / "server" / "auth" / "config.py")
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "from-the-environment")
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    read = config.read_auth_config()
    assert read.admin_username == "admin" and read.admin_password == "from-the-environment"
    assert read.database_uri == f"sqlite:///{tmp_path}/mlflow/basic_auth.db"
    assert read.default_permission == "READ"
    assert read.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"


# a literal value given to a name that contains the word (NAME=value, name = value, or YAML's name-colon-value)
PASSWORD_LITERAL = re.compile(
    r"(?i)\b\w*pass" r"word\w*\b['\"]?\s*(?:=|:(?!\s*$))\s*"
    r"(?!\$|\"\$|'\$|\{|$|<|\)|,|\"|\.?/|~)([^\s'\"]+)",  # not: $VAR, "$(...)", {..}, a path, nothing
    re.MULTILINE)


def test_no_password_literal_in_the_cluster_files_or_docs() -> None:
    files = [*LAUNCHER_FILES, RAYJOB_FILE, CLUSTER_DOC, ROOT / "README.md"]
    hits = [f"{p.name}: {m.group(0)}" for p in files for m in PASSWORD_LITERAL.finditer(p.read_text())]
    assert not hits, hits


def test_password_pattern_finds_literals() -> None:
    """The scan above is real: literal values are found, values from files, variables or secrets are not."""
    for bad in ("MLFLOW_TRACKING_PASSWORD=hunter2", "admin_password = s3cret", "pass" "word" ": abc123"):
        assert PASSWORD_LITERAL.search(bad), bad
    for ok in ('MLFLOW_TRACKING_PASSWORD="$(cat ~/mlflow/admin_password)"', "MLFLOW_TRACKING_PASSWORD=$PW",
              "--from-file=password=./pw.txt",
              "- name: MLFLOW_TRACKING_PASSWORD\n  valueFrom: {secretKeyRef: {name: x, key: password}}"):
        assert not PASSWORD_LITERAL.search(ok), ok


# --------------------------------------------------------------------------------------------------
# the RayJob


def test_rayjob_runs_the_search_on_an_autoscaled_gpu_group() -> None:
    job = load(RAYJOB_FILE)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    import ray

    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert str(head["rayStartParams"].get("num-gpus")) == "0", "no trial on the head"
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "a worker group with nvidia.com/gpu limits"
    for group in gpu_groups:
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        for c in group["template"]["spec"]["containers"]:
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    images = {c["image"] for g in [head, *cluster["workerGroupSpecs"]] for c in g["template"]["spec"]["containers"]}
    assert images and all(f":{ray.__version__}" in i for i in images), images


def test_rayjob_entrypoint_is_the_search_the_launcher_clusters_run() -> None:
    args = search_args(load(RAYJOB_FILE)["spec"]["entrypoint"])
    check_same_search(args, "kuberay/rayjob.yaml")
    assert re.fullmatch(r"(s3|gs)://[\w.-]+/\S+", args["--storage"]), "the RayJob's storage is a URI every pod reads"
    assert args["--tracking-uri"] == "$MLFLOW_TRACKING_URI"
    for i, command in enumerate(documented_searches()):
        check_same_search(search_args(command), f"docs/cluster.md search command {i + 1}")


def test_rayjob_mlflow_login_comes_from_a_secret() -> None:
    cluster = load(RAYJOB_FILE)["spec"]["rayClusterSpec"]
    env = {e["name"]: e for c in cluster["headGroupSpec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert name in env, f"the driver (on the head) needs {name}"
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"], name


def test_search_args_parses_what_it_should() -> None:
    """The comparison above can fail: a command missing a flag or with another space is caught."""
    good = "python -m tuning.search --space ablation --data /data/GTEA61 --address auto --storage s3://b/r " \
           "--tracking-uri \"$U\""
    check_same_search(search_args(good), "good")
    with pytest.raises(AssertionError):
        check_same_search(search_args(good.replace("ablation", "smoke")), "other space")
    with pytest.raises(AssertionError):
        check_same_search(search_args(good.replace(" --address auto", "")), "no address")


# --------------------------------------------------------------------------------------------------
# what `ray up` copies to the head


def rsync_excluded(path: str, patterns: list[str]) -> bool:
    """Whether rsync's ``--exclude PATTERN`` (as Ray passes ``rsync_exclude``) leaves ``path``, relative to
    the synced root, out: a pattern with a leading "/" matches from the root, one without matches any name
    along the path; ``*`` stays within a name; an excluded folder takes its contents with it."""
    parts = path.split("/")
    for p in patterns:
        if p.startswith("/"):
            depth = p.count("/")
            if len(parts) >= depth and fnmatch.fnmatchcase("/".join(parts[:depth]), p[1:]):
                return True
        elif any(fnmatch.fnmatchcase(name, p) for name in parts):
            return True
    return False


LOCAL_RUN_WRITES = ["mlflow.db", "mlflow.db-journal", "optuna.db", "optuna.db-wal", "mlartifacts/1/abc/model.pt",
                    "ray_results/ablation/tuner.pkl", "retrain/seed_0/config.json", "export-1a2b3c4d/model.onnx",
                    "runs/r1/metrics.csv", "out/x.png", "mlruns/0/meta.yaml", "egosearch.egg-info/PKG-INFO"]
THE_PROJECT = ["tuning/search.py", "cluster.env", "search_spaces/ablation.yaml", "docs/cluster.md",
               "tests/fixtures/saved_search_v1/searcher_state_v1/tuner.pkl", "pyproject.toml"]


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_a_local_runs_stores_are_never_synced_onto_the_head(path: Path) -> None:
    """A laptop's smoke study, MLflow store and results stay on the laptop: a re-sync (``ray up``) would
    otherwise put them on the head, or over the head's own."""
    patterns = load(path)["rsync_exclude"]
    assert [f for f in LOCAL_RUN_WRITES if not rsync_excluded(f, patterns)] == []
    assert [f for f in THE_PROJECT if rsync_excluded(f, patterns)] == []
    ignored = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines() if line.strip()]
    local = [g.rstrip("/").replace("*", "x") for g in ignored if g != "/cluster.env"]  # cluster.env is synced
    assert [g for g in local if not rsync_excluded(g.lstrip("/"), patterns)] == [], "ignored by git, yet synced"


def test_rsync_excluded_reads_patterns_as_rsync_does() -> None:
    assert rsync_excluded("mlflow.db", ["/mlflow.db*"]) and not rsync_excluded("sub/mlflow.db", ["/mlflow.db*"])
    assert rsync_excluded("a/b/__pycache__/x.pyc", ["__pycache__"]) and rsync_excluded("w.pt", ["*.pt"])
    assert not rsync_excluded("export.py", ["/export-*"]) and not rsync_excluded("tuning/retrain.py", ["/retrain"])


def test_rayjob_keeps_the_study_on_a_volume_that_outlives_the_head_pod() -> None:
    """The job logs to the tracking server of its secret (runs and artifacts live there); the study goes
    where the search puts it for a tracking server, which must be a persistent volume on the head pod."""
    from tuning.execution.study import default_storage

    job = load(RAYJOB_FILE)
    args = search_args(job["spec"]["entrypoint"])
    assert "--optuna-storage" not in args, "the entrypoint relies on the default place, checked here"
    pod = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (head,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in head["env"]}
    study = default_storage("http://mlflow.example.internal:5000")  # the secret's tracking URI is a server
    assert study.startswith("sqlite:///~/")
    study_file = env["HOME"] + study[len("sqlite:///~"):]
    mounts = {m["mountPath"]: m for m in head["volumeMounts"]}
    folder = str(Path(study_file).parent)
    assert folder in mounts and not mounts[folder].get("readOnly"), f"{study_file}: no writable volume at {folder}"
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts[folder]["name"]].get("persistentVolumeClaim")
    assert claim and claim["claimName"] and not claim.get("readOnly"), "the study's volume is a claim, not the pod's"
    assert pod["securityContext"]["fsGroup"] == 100, "the image's user (group 100) writes the claim"
