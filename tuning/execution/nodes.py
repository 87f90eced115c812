"""Run one small function on every Ray node alive now, each in a zero-CPU task pinned to its node: the
before-any-trial checks (the storage, the backbone weights) use it to name every node that fails."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeProblem:
    address: str
    node_id: str
    problem: str
    ran: bool = True  # False: the task could not run on that node

    def __str__(self) -> str:
        return f"node {self.address} (Ray node {self.node_id}): {self.problem}"


def this_node() -> str:
    """This node's address and Ray node id (nodes of one machine share the address)."""
    try:
        import ray

        where = ray.util.get_node_ip_address()
        return f"{where}, Ray node {ray.get_runtime_context().get_node_id()}" if ray.is_initialized() else where
    except Exception:  # noqa: BLE001 - only for a message
        return "address unknown"


def on_every_node(fn: Callable[..., str | None], *args: Any,
                  timeout_s: float = 120.0) -> tuple[int, list[NodeProblem]]:
    """``fn(*args)`` (None: fine, else what is wrong) on every alive node; the number of nodes and the
    problems. A node whose task could not run is a problem too: it cannot be trusted."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    # keyed by node id: several nodes may share one address (raylets of one machine)
    refs = {(n["NodeManagerAddress"], n["NodeID"]): task.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(*args) for n in nodes}
    problems = []
    for (address, node_id), ref in refs.items():
        try:
            problem = ray.get(ref, timeout=timeout_s)
        except Exception as e:  # noqa: BLE001 - reported with the node
            problems.append(NodeProblem(address, node_id, f"the check could not run there: {type(e).__name__}: {e}",
                                        ran=False))
            continue
        if problem:
            problems.append(NodeProblem(address, node_id, problem))
    return len(nodes), problems
