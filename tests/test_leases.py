"""The stage store's lease actor on a local Ray: one holder under concurrent claims, from trials'
processes; a dead holder's lease handed over after expiry."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time

import pytest
import ray

from tuning.execution.leases import ActorLeases, LeaseServiceGone, start_lease_actor
from tuning.execution.stage_store import StageStore


@pytest.fixture(scope="module")
def local_ray():
    session = tempfile.mkdtemp(prefix="rl-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=session)
    yield
    ray.shutdown()
    shutil.rmtree(session, ignore_errors=True)


@ray.remote(num_cpus=1, max_retries=0)
def claim_in_a_worker(leases: ActorLeases, key: str, owner: str, start_at: float) -> bool:
    time.sleep(max(0.0, start_at - time.time()))  # every worker claims at the same moment
    return leases.claim(key, owner, owner, 30.0)[0]


@ray.remote(num_cpus=1, max_retries=0)
def claim_and_die(root: str, leases: ActorLeases) -> None:
    store = StageStore(root, lease_seconds=1.0, leases=leases)
    assert store.get_or_claim("k", "trial dead") is None
    os._exit(1)  # the worker dies holding the lease: no release, no more heartbeats


def test_concurrent_claims_grant_one_holder(local_ray):
    leases, _actor = start_lease_actor()
    start_at = time.time() + 1.0
    in_worker = claim_in_a_worker.remote(leases, "k", "trial w", start_at)
    granted = []
    threads = [threading.Thread(target=lambda i=i: granted.append(leases.claim("k", f"trial d{i}", f"d{i}", 30.0)[0]))
               for i in range(6)]
    time.sleep(max(0.0, start_at - time.time()))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) + ray.get(in_worker) == 1  # seven claimants, one of them a trial's process


def test_a_dead_holders_lease_passes_on_after_expiry(local_ray, tmp_path):
    leases, actor = start_lease_actor()
    with pytest.raises(ray.exceptions.RayError):
        ray.get(claim_and_die.remote(str(tmp_path), leases))
    t0 = time.monotonic()
    logs = []
    other = StageStore(str(tmp_path), lease_seconds=1.5, poll_seconds=0.1, leases=leases, log=logs.append)
    assert other.get_or_claim("k", "trial next") is None  # waits for the expiry, then holds it
    print(f"lease handed over {time.monotonic() - t0:.2f} s after the holder's death was seen")
    assert time.monotonic() - t0 < 5 and any("held by trial dead expired" in m for m in logs)
    assert not leases.claim("k", "trial third", "t3", 30.0)[0]  # and holds it alone (its heartbeat renews it)
    time.sleep(2.0)  # past its lifetime: renewed meanwhile
    assert not leases.claim("k", "trial third", "t3", 30.0)[0]
    other.put("k", {"by": "trial next"})
    assert leases.claim("k", "trial third", "t3", 30.0)[0]  # released with the result
    ray.kill(actor)
    with pytest.raises(LeaseServiceGone, match="rerun the search with --resume"):
        ActorLeases(leases.name, leases.namespace).claim("k", "late", "late", 1.0)
