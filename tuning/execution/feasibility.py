"""Trials that no node can ever run: refused before the search starts, or reported within minutes.

What the cluster can provide is known in three ways, used in this order:

* the nodes alive now (``ray.nodes()``, their total resources): a trial that fits one of them only waits;
* the node types an autoscaler may launch: on a head started by ``ray up`` the cluster launcher leaves the
  prepared cluster file at ``~/ray_bootstrap_config.yaml`` (Ray's own Tune reads the same file to tell
  a launcher cluster); its ``available_node_types`` with declared ``resources`` are the complete list;
* Ray's autoscaler v2 (the default on KubeRay) reports the demands it cannot meet with any node type to
  the GCS (``infeasible_gang_resource_requests``; Tune's trials are placement groups).

Before any trial (:func:`check_before_start`) a trial is refused only when one of these says so for
certain: on the local Ray the search starts itself (no autoscaler: the machine is all there is), or on
a launcher head whose node types all have declared resources. A cluster reached by ``--address`` whose
node types are unknown may still add a node that fits (an autoscaling cluster with no worker yet looks
exactly like one that never will), so it is not refused; :class:`PendingWatch` reports it instead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
KUBERAY_ENV = "RAY_CLUSTER_NAME"  # KubeRay sets it in every Ray pod it starts
WAIT_ENV = "EGOSEARCH_PENDING_REPORT_S"  # how long trials may all wait before they are diagnosed (default 120)


class InfeasibleError(RuntimeError):
    pass


def ray_bundle(resources: dict[str, float]) -> dict[str, float]:
    """A space's trial ``resources`` ({cpu, gpu, ...}) as the resource names nodes advertise."""
    names = {"cpu": "CPU", "gpu": "GPU"}
    return {names.get(k, k): float(v) for k, v in resources.items() if v}


def fits(bundle: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(k, 0.0) >= v for k, v in bundle.items() if v > 0)


def describe(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU") or not (
        k.startswith("node:") or k in ("memory", "object_store_memory") or k.startswith("accelerator_type"))}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


def node_types(path: str | None = None) -> dict[str, dict[str, float]] | None:
    """The launcher's node types and their resources (from ``path``, by default the bootstrap file); None
    when this is not a launcher head, or when a type leaves its resources to detection (then what it
    provides is not known in advance)."""
    types = _bootstrap_types(path)
    if types is None:
        return None
    out = {}
    for name, spec in types.items():
        res = (spec or {}).get("resources")
        if not res:
            return None
        out[name] = {k: float(v) for k, v in res.items()}
    return out or None


def _bootstrap_types(path: str | None) -> dict[str, Any] | None:
    """``available_node_types`` of the launcher's bootstrap file; None when there is none."""
    file = Path(path or BOOTSTRAP_CONFIG).expanduser()
    if not file.is_file():
        return None
    import yaml

    try:
        return (yaml.safe_load(file.read_text()) or {}).get("available_node_types") or {}
    except (OSError, yaml.YAMLError):
        return None


def adds_nodes_later(path: str | None = None) -> str | None:
    """Why this cluster may launch nodes after the search started (KubeRay, or a launcher node type that
    can grow), or None: then the nodes alive now are all there will be."""
    if os.environ.get(KUBERAY_ENV):
        return f"KubeRay cluster {os.environ[KUBERAY_ENV]} (its worker groups scale)"
    for name, spec in (_bootstrap_types(path) or {}).items():
        spec = spec or {}
        if int(spec.get("max_workers", 0)) > int(spec.get("min_workers", 0)):
            return f"the cluster launcher's node type {name} (min_workers {spec.get('min_workers', 0)}, " \
                   f"max_workers {spec['max_workers']})"
    return None


def alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _cluster_status() -> Any | None:
    """The GCS's autoscaling report, or None when it cannot be read."""
    try:
        import ray
        from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

        reply = GetClusterStatusReply()
        reply.ParseFromString(ray._private.worker.global_worker.gcs_client.get_cluster_status())
        return reply
    except Exception:  # noqa: BLE001 - a diagnosis aid only
        return None


def autoscaler_report() -> tuple[bool, list[dict[str, float]]]:
    """(whether Ray's autoscaler v2 reports to the GCS; the bundles it calls infeasible). Without v2 this
    says nothing: every head runs Ray's v1 monitor, a read-only one on a cluster that cannot scale, and a
    driver cannot tell the two apart."""
    reply = _cluster_status()
    if reply is None:
        return False, []
    state = reply.autoscaling_state
    infeasible = [dict(r.resources_bundle) for g in state.infeasible_gang_resource_requests for r in g.requests]
    infeasible += [dict(r.resources_bundle) for r in state.infeasible_resource_requests]
    return bool(state.autoscaler_state_version), infeasible


def _refusal(bundle: dict[str, float], alive: list[dict[str, float]], types: dict[str, dict[str, float]] | None,
             where: str) -> str:
    parts = [f"each trial asks for {describe(bundle)}, but no node {where} can ever provide it"]
    if types:
        parts.append("node types: " + "; ".join(f"{n} {describe(r)}" for n, r in types.items()))
    parts.append("nodes alive: " + ("; ".join(describe(r) for r in alive) or "none"))
    return ". ".join(parts) + (". Lower the space's resources (cpu, gpu), or add a node type that has them "
                               "(cluster.yaml: available_node_types).")


def check_before_start(resources: dict[str, float], local: bool) -> None:
    """Raise :class:`InfeasibleError` when it is certain that no node can run a trial (see the module)."""
    bundle = ray_bundle(resources)
    alive = alive_nodes()
    if any(fits(bundle, r) for r in alive):
        return
    if local:
        raise InfeasibleError(_refusal(bundle, alive, None, "of this machine's Ray (no autoscaler)"))
    types = node_types()
    if types is not None and not any(fits(bundle, r) for r in types.values()):
        raise InfeasibleError(_refusal(bundle, alive, types, f"type of the cluster file {BOOTSTRAP_CONFIG}"))


def diagnose(bundle: dict[str, float], alive: list[dict[str, float]], types: dict[str, dict[str, float]] | None,
             local: bool, infeasible: list[dict[str, float]]) -> tuple[bool, str] | None:
    """Why a trial waits: None when a node alive could run it (it waits for running trials to end);
    (True, message) when no node can ever run it; (False, message) when only an autoscaler still could."""
    if any(fits(bundle, r) for r in alive):
        return None
    if types is not None and not any(fits(bundle, r) for r in types.values()):
        return True, _refusal(bundle, alive, types, "type of the cluster file")
    if any(all(b.get(k, 0.0) == v for k, v in bundle.items()) for b in infeasible):
        return True, _refusal(bundle, alive, None, "type the autoscaler can launch (it reports the request infeasible)")
    if local:
        return True, _refusal(bundle, alive, None, "of this machine's Ray (no autoscaler)")
    return False, (f"each trial asks for {describe(bundle)}; no node alive has it (nodes alive: "
                   f"{'; '.join(describe(r) for r in alive) or 'none'}) and the autoscaler has not provided one. "
                   "Check `ray status` (pending or failed launches) and the node types' resources.")


class PendingWatch(Callback):
    """A Tune callback: when trials have been PENDING with none RUNNING for ``after_s`` seconds, it asks
    why (:func:`diagnose`). No node can ever run them: the search stops with :class:`InfeasibleError`
    naming what was asked and what the cluster has. Only an autoscaler still could: a warning, repeated
    every ``every_s`` seconds while nothing changes."""

    def __init__(self, local: bool, after_s: float | None = None, every_s: float = 300.0) -> None:
        self.local = local  # the local Ray the search started itself: no autoscaler
        self.after_s = float(os.environ.get(WAIT_ENV, 120)) if after_s is None else after_s
        self.every_s = every_s
        self._since: float | None = None
        self._reported = 0.0

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        statuses = {t.status for t in trials}
        if "RUNNING" in statuses or "PENDING" not in statuses:
            self._since = None
            return
        now = time.monotonic()
        if self._since is None:
            self._since = now
            return
        if now - self._since < self.after_s or now - self._reported < self.every_s:
            return
        self._reported = now
        waited = now - self._since
        pending = [t for t in trials if t.status == "PENDING"]
        bundle = dict(pending[0].placement_group_factory.bundles[0])
        _, infeasible = autoscaler_report()
        found = diagnose(bundle, alive_nodes(), None if self.local else node_types(), self.local, infeasible)
        if found is None:
            return
        certain, message = found
        message = f"{len(pending)} trial(s) pending for {waited:.0f} s with none running: {message}"
        if certain:
            raise InfeasibleError(message)
        print(f"warning: {message}", flush=True)

    def __getstate__(self) -> dict[str, Any]:  # saved with the experiment: the timers start afresh
        return {"local": self.local, "after_s": self.after_s, "every_s": self.every_s, "_since": None,
                "_reported": 0.0}
