"""The search on Ray's autoscaling simulator (``tests/fake_cluster.py``: fake GPU worker nodes launched on
demand as separate raylets on this machine, the cluster in its own PID namespace).

Slow (minutes on 2 cores): the default run covers the same two defects faster, with the trial-resource
decision in ``test_search.py::test_trials_ask_a_cluster_for_the_spaces_gpu_even_before_it_has_one`` and
the storage check on a local Ray in ``test_search.py::test_storage_is_checked_from_every_node_and_in_each_trial``.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import write_space
from tests.fake_cluster import autoscaler_config, cluster_ports, needs_namespaces, run_in_namespace, trial_rows

pytestmark = [pytest.mark.slow, needs_namespaces]

UNREADY_NODE = "5e" * 28  # the Ray node id given to the node without the storage


def test_gpu_trials_scale_workers_from_zero_and_pack_two_per_worker(tmp_path, tiny_root):
    """The smoke search with ``gpu: 0.5`` trials on a cluster whose only node is a CPU head: the trials'
    demand makes the autoscaler launch GPU workers, every trial runs on a worker, two at once on one."""
    ports = cluster_ports()
    (tmp_path / "autoscaler.yaml").write_text(yaml.safe_dump(autoscaler_config(ports["PORT"])))
    # FIFO: both trials run to the end (the early stopper would stop one of two), so their spans can overlap
    space = write_space(tmp_path, num_samples=2, max_concurrent=2, resources={"cpu": 1, "gpu": 0.5},
                        scheduler={"type": "fifo"})
    script = f"""
RAY_FAKE_CLUSTER=1 $HEAD --autoscaling-config=autoscaler.yaml > head.log 2>&1 || exit 90
"$PY" -m tuning.search --space {space} --data {tiny_root} --address "127.0.0.1:$PORT" \\
    --storage {tmp_path}/ray_results > search.out 2> search.err
echo $? > search.rc
"$PY" -c "import json, ray; ray.init(address='127.0.0.1:$PORT', log_to_driver=False); \\
json.dump(ray.nodes(), open('nodes.json', 'w'))" > nodes.log 2>&1
"""
    proc = run_in_namespace(script, tmp_path, timeout=1200, ports=ports)
    logs = "".join((tmp_path / n).read_text()[-3000:] for n in ("head.log", "search.out", "search.err")
                   if (tmp_path / n).exists())
    assert proc.returncode == 0 and (tmp_path / "search.rc").read_text().strip() == "0", logs + proc.stderr[-2000:]
    out = (tmp_path / "search.out").read_text()
    assert "readable from all 1 node alive now" in out  # only the head was up: the workers came later
    nodes = json.loads((tmp_path / "nodes.json").read_text())
    head = {n["NodeID"] for n in nodes if "node:__internal_head__" in n["Resources"]}
    workers = {n["NodeID"] for n in nodes if n["Resources"].get("GPU", 0) == 1}
    assert len(head) == 1 and workers and not head & workers, nodes
    rows = trial_rows(tmp_path / "ray_results" / "test_space")
    assert len(rows) == 2 and all(r[-1].get("final") for r in rows.values()), rows.keys()
    ran_on = {t: {r["node_id"] for r in rs} for t, rs in rows.items()}
    assert all(len(n) == 1 and n <= workers for n in ran_on.values()), (ran_on, workers)  # never on the head
    spans = {t: (min(r["timestamp"] - r["time_total_s"] for r in rs), max(r["timestamp"] for r in rs))
             for t, rs in rows.items()}
    print(f"GPU workers launched: {len(workers)}; trial -> node: {ran_on}; trial spans (s): {spans}")
    (a, na), (b, nb) = [(t, next(iter(n))) for t, n in ran_on.items()]
    assert na == nb and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1], (ran_on, spans)


def test_storage_one_node_cannot_read_is_refused_before_any_trial(tmp_path, tiny_root):
    """A second node joins with a tmpfs over the storage folder (its own mount namespace): the search
    names that node and the path, and no trial starts."""
    storage = tmp_path / "shared"
    storage.mkdir()
    space = write_space(tmp_path)
    script = f"""
$HEAD > head.log 2>&1 || exit 90
RAY_OVERRIDE_NODE_ID_FOR_TESTING={UNREADY_NODE} unshare --mount --propagation private sh -c \\
    'mount -t tmpfs tmpfs "$0" && exec "$RAY" start --address="127.0.0.1:$PORT" --num-cpus=1 \\
     --node-ip-address=127.0.0.1 --dashboard-agent-listen-port="$NODE_AGENT_PORT" \\
     --disable-usage-stats' {storage} > node.log 2>&1 || exit 91
"$PY" -m tuning.search --space {space} --data {tiny_root} --address "127.0.0.1:$PORT" \\
    --storage {storage} > search.out 2> search.err
echo $? > search.rc
"""
    proc = run_in_namespace(script, tmp_path, timeout=600, ports=cluster_ports())
    logs = "".join((tmp_path / n).read_text()[-3000:] for n in ("head.log", "node.log", "search.out", "search.err")
                   if (tmp_path / n).exists())
    assert proc.returncode == 0 and (tmp_path / "search.rc").exists(), logs + proc.stderr[-2000:]
    err = (tmp_path / "search.err").read_text()
    assert (tmp_path / "search.rc").read_text().strip() != "0", logs
    assert f"Ray node {UNREADY_NODE}" in err and f"cannot read the search's storage {storage}" in err, logs
    assert err.count("cannot read") == 1  # the head reads it: only the other node is named
    assert not list(storage.glob("test_space/*/result.json")) and "Trial" not in (tmp_path / "search.out").read_text()
