"""Stage-prefix reuse: computed once, shared exactly, keyed on what the stages depend on."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from egomodel.model import checkpoint as ck
from egomodel.training.engine import train
from egomodel.training.stage_keys import stage_key
from tests.conftest import REPO, tiny_config
from tuning.execution.leases import FileLocks, LeaseTable
from tuning.execution.stage_store import StageStore


def store_on(root, table, lease_seconds=300.0, log=print):
    """A store whose leases are ``table`` (what the driver's actor holds), in this process."""
    return StageStore(str(root), lease_seconds=lease_seconds, poll_seconds=0.05, leases=table, log=log)


def test_two_concurrent_claims_compute_once(tmp_path):
    computed, got, logs = [], {}, []

    def trial(name):
        store = StageStore(str(tmp_path), poll_seconds=0.05, log=logs.append)
        path = store.get_or_claim("k1", name)
        if path is None:
            computed.append(name)
            time.sleep(0.5)
            store.put("k1", {"state": {"w": torch.ones(2)}, "computed_by": name})
            path = store.get_or_claim("k1", name)
        got[name] = torch.load(path, weights_only=True)["computed_by"]

    threads = [threading.Thread(target=trial, args=(f"t{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(computed) == 1 and set(got.values()) == {computed[0]}
    assert any("waiting for" in m for m in logs)  # the waiting trial says so


def test_a_crashed_holders_lease_expires(tmp_path):
    table = LeaseTable()  # what the driver's actor holds
    crashed = store_on(tmp_path, table, lease_seconds=0.3)
    assert crashed.get_or_claim("k", "crashed") is None
    crashed._beats.pop("k").set()  # the holder dies: no more heartbeats, no release
    logs = []
    other = store_on(tmp_path, table, lease_seconds=0.3, log=logs.append)
    start = time.time()
    assert other.get_or_claim("k", "other") is None  # it takes the lease over once it expired
    assert time.time() - start >= 0.2 and any("expired" in m for m in logs)


def test_a_retried_trial_takes_over_its_dead_attempts_lease_at_once(tmp_path):
    table = LeaseTable()
    dead = store_on(tmp_path, table)
    assert dead.get_or_claim("k", "trial t1") is None
    dead._beats.pop("k").set()  # the worker was killed: its lease would stand for 300 s
    logs = []
    retry = store_on(tmp_path, table, log=logs.append)
    start = time.time()
    assert retry.get_or_claim("k", "trial t1") is None  # the same trial, another process: no wait
    assert time.time() - start < 5 and any("failed attempt" in m for m in logs)
    other = store_on(tmp_path, table)
    waited = threading.Thread(target=other.get_or_claim, args=("k", "trial t2"), daemon=True)
    waited.start()
    waited.join(0.5)
    assert waited.is_alive()  # another trial still waits for the live holder
    retry.put("k", {"x": 1})
    waited.join(10)
    assert not waited.is_alive()


def test_the_heartbeat_outlives_transient_errors(tmp_path):
    """A renewal that fails (storage or actor briefly unreachable) is retried: the lease never lapses
    while its holder computes."""

    class Flaky(LeaseTable):
        fails = 3

        def renew(self, key, token, ttl):
            if self.fails:
                self.fails -= 1
                raise OSError("connection reset")
            return super().renew(key, token, ttl)

    table, logs = Flaky(), []
    holder = store_on(tmp_path, table, lease_seconds=1.5, log=logs.append)
    assert holder.get_or_claim("k", "holder") is None
    time.sleep(3.2)  # three failed renewals (one every 0.5 s), then good ones: still held
    assert table.fails == 0 and sum("could not renew" in m for m in logs) == 3
    assert table.claim("k", "other", "tok", 300) == (False, "holder", "")
    holder.release("k")
    assert table.claim("k", "other", "tok", 300)[0]


def test_a_reader_never_sees_a_half_written_result(tmp_path):
    """While a payload is half written a reader finds no result (and no "corrupt" one to delete); a
    second holder writing the same key (its lease expired while it computed) never mixes its file with
    the first one's hash; a writer that dies mid-write leaves nothing a reader would take."""

    class Slow(StageStore):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.halfway, self.go_on = threading.Event(), threading.Event()

        def _write(self, path, data):
            if path.endswith(".pt"):
                super()._write(path, data[: len(data) // 2])
                self.halfway.set()
                self.go_on.wait(10)
            super()._write(path, data)

    def put_paused(store, payload):
        t = threading.Thread(target=store.put, args=("k", payload))
        t.start()
        store.halfway.wait(1.0)  # (a holder that finds a published result writes nothing at all)
        return t

    logs = []
    reader = StageStore(str(tmp_path), log=logs.append)
    first, second = Slow(str(tmp_path)), Slow(str(tmp_path))
    assert first.get_or_claim("k", "first") is None
    a = {"w": torch.arange(200_000, dtype=torch.float32), "by": "first"}
    t = put_paused(first, a)
    assert reader._result("k") is None and logs == []  # not there yet, and not "corrupt" either
    first.go_on.set()
    t.join(10)
    t = put_paused(second, {"w": -a["w"], "by": "second"})
    assert torch.equal(torch.load(reader._result("k"), weights_only=True)["w"], a["w"]) and logs == []
    second.go_on.set()
    t.join(10)
    assert torch.load(reader.get_or_claim("k", "reader"), weights_only=True)["by"] == "first" and logs == []

    class Dies(StageStore):
        def _write(self, path, data):
            if path.endswith(".pt"):
                super()._write(path, data[:100])
                raise OSError("node lost")
            super()._write(path, data)

    dying = Dies(str(tmp_path))
    assert dying.get_or_claim("k2", "dying") is None
    with pytest.raises(OSError):
        dying.put("k2", a)
    assert StageStore(str(tmp_path), poll_seconds=0.05).get_or_claim("k2", "next") is None  # its to compute


def test_local_copies_live_in_a_temp_folder_only_while_a_store_loads(tmp_path, monkeypatch):
    """A trial process that Ray kills never runs its finalizers: a store that only computes and publishes
    leaves no temporary folder behind; one that loads a result removes its copy with the store."""
    import gc
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    holder = StageStore(str(tmp_path / "store"))
    assert holder.get_or_claim("k", "a") is None
    holder.put("k", {"state": {}, "computed_by": "a"})
    assert list(temp.iterdir()) == []
    reader = StageStore(str(tmp_path / "store"))
    assert torch.load(reader.get_or_claim("k", "b"), weights_only=True)["computed_by"] == "a"
    assert [p.name[:12] for p in temp.iterdir()] == ["stage-store-"]
    del reader
    gc.collect()
    assert list(temp.iterdir()) == []


def test_a_corrupted_result_is_detected_and_recomputed(tmp_path):
    store = StageStore(str(tmp_path))
    assert store.get_or_claim("k", "a") is None
    store.put("k", {"state": {}, "computed_by": "a"})
    assert store.get_or_claim("k", "b") is not None
    blob = next((tmp_path / "k").glob("result-*.pt"))
    blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
    logs = []
    store2 = StageStore(str(tmp_path), log=logs.append)
    assert store2.get_or_claim("k", "c") is None and any("corrupt" in m for m in logs)
    store2.put("k", {"state": {}, "computed_by": "c"})  # republished, the corrupt payload gone
    assert [p.name for p in (tmp_path / "k").glob("result-*.pt")] != [blob.name]
    assert torch.load(store.get_or_claim("k", "d"), weights_only=True)["computed_by"] == "c"


def test_a_lock_holders_death_frees_the_lease_at_once(tmp_path):
    """Without Ray (one machine, processes): the lease is an flock, which the kernel drops when its holder
    dies; the holder's name is shown to the others meanwhile."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tuning.execution.leases import FileLocks; "
         "print(FileLocks(sys.argv[1]).claim('k', 'trial p', 'p', 1)[0], flush=True); time.sleep(120)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "True"
        locks = FileLocks(str(tmp_path))
        assert locks.claim("k", "trial q", "q", 1) == (False, "trial p", "")
    finally:
        holder.kill()
        holder.wait()
    assert locks.claim("k", "trial q", "q", 1) == (True, "trial q", "")


def test_a_shared_uri_needs_the_lease_actor():
    with pytest.raises(ValueError, match="lease actor"):
        StageStore("mock://bucket/store")


def test_keys_follow_what_each_stage_depends_on(tiny_root):
    base = tiny_config(tiny_root)
    fp = "f" * 16
    later = tiny_config(tiny_root, model__alpha=3.0, model__insertion="layer2", train__stage3__lr=1e-3)
    assert stage_key(base, fp, 1) == stage_key(later, fp, 1)
    assert stage_key(base, fp, 2) != stage_key(later, fp, 2)  # alpha changes stage 2
    only3 = tiny_config(tiny_root, model__insertion="layer2", train__stage3__lr=1e-3)
    assert stage_key(base, fp, 2) == stage_key(only3, fp, 2) and stage_key(base, fp, 3) != stage_key(only3, fp, 3)
    assert stage_key(base, fp, 1) != stage_key(tiny_config(tiny_root, train__seed=1), fp, 1)
    assert stage_key(base, fp, 1) != stage_key(base, "e" * 16, 1)  # another data set
    assert stage_key(base, fp, 1) == stage_key(tiny_config(tiny_root, model__variant="ms"), fp, 1)


def test_the_code_version_hashes_all_of_egomodel():
    """Stage results depend on the model, the data pipeline and the training code alike: the hash reads
    the whole package, wherever stage_keys.py lives in it."""
    import egomodel
    from egomodel.training import stage_keys

    assert stage_keys.SOURCE == Path(egomodel.__file__).resolve().parent


def test_trials_share_stages_exactly(tmp_path, tiny_root):
    store = StageStore(str(tmp_path / "store"))
    a = train(tiny_config(tiny_root), tmp_path / "a", progress=False, store=store, owner="trial-a")
    reports = []
    b_cfg = tiny_config(tiny_root, train__stage3__lr=1e-3, model__insertion="layer1")
    b = train(b_cfg, tmp_path / "b", progress=False, store=store, owner="trial-b", callback=reports.append)
    assert a["from_store"] == []
    assert [(s["stage"], s["computed_by"]) for s in b["from_store"]] == [(1, "trial-a"), (2, "trial-a")]
    assert [r.from_store for r in reports] == [True, True, True, False]
    alone = train(b_cfg, tmp_path / "c", progress=False)  # the same trial without the store
    assert alone["val_top1"] == b["val_top1"] and alone["test_top1"] == b["test_top1"]
    sb = ck.load(tmp_path / "b" / "checkpoints" / ck.best_name(3))["model"]
    sc = ck.load(tmp_path / "c" / "checkpoints" / ck.best_name(3))["model"]
    assert all(torch.equal(sb[k], sc[k]) for k in sc)
    seeded = train(tiny_config(tiny_root, train__seed=1), tmp_path / "d", progress=False, store=store, owner="d")
    assert seeded["from_store"] == []  # another seed shares nothing


class Killed(Exception):
    """The trial's process dies here (in the test: the callback raises it)."""


class DyingStore(StageStore):
    """A holder whose process is killed: its heartbeat stops and it releases nothing (the lease stands
    until it expires or the same trial's next attempt takes it over)."""

    def release(self, key):
        stop = self._beats.pop(key, None)
        if stop is not None:
            stop.set()


def killed_at(global_epoch):
    def callback(r):
        if r.global_epoch == global_epoch:
            raise Killed
    return callback


def stage_rows(metrics):
    return [(h["stage"], h["epoch"]) for h in metrics["history"]]


@pytest.mark.parametrize("kill_at", [1, 2], ids=["mid-stage", "at-the-stage-end"])
def test_a_holder_resumed_after_a_kill_publishes_its_stage(tmp_path, tiny_root, kill_at):
    """A trial killed while it computes stage 1 (after epoch 1 of 2, or after its last epoch but before
    storing it) resumes from its checkpoint and publishes the stage (once resumed, it holds the lease: a
    bug would show as the waiter taking over the expired lease and computing stage 1 again). The trial
    that shares it loads it. Stage 1 of this config has 2 epochs."""
    table = LeaseTable()  # the search's lease actor; a short lease so that a bug shows as a recomputation
    cfg = tiny_config(tiny_root)
    with pytest.raises(Killed):
        train(cfg, tmp_path / "a", progress=False, callback=killed_at(kill_at), owner="trial a",
              store=DyingStore(str(tmp_path / "store"), lease_seconds=1.0, leases=table))
    logs, reports = [], []
    a = train(cfg, tmp_path / "a", resume=True, progress=False, callback=reports.append, owner="trial a",
              store=store_on(tmp_path / "store", table, lease_seconds=1.0, log=logs.append), evaluate_test=False)
    assert [r.global_epoch for r in reports] == list(range(kill_at + 1, 5))  # nothing reported twice
    assert not any(r.from_store for r in reports) and a["from_store"] == []
    assert stage_rows(a) == [(1, 1), (1, 2), (2, 1), (3, 1)]
    waiter = store_on(tmp_path / "store", table, lease_seconds=1.0)
    if kill_at == 2:  # published before it went on to stage 2
        stored = waiter.get_or_claim(stage_key(cfg, a["data_fingerprint"], 1), "trial b")
        assert torch.load(stored, weights_only=True)["computed_by"] == "trial a"
        return
    assert any("failed attempt" in m for m in logs)  # its dead attempt's lease, taken over at once
    b_reports = []
    b = train(tiny_config(tiny_root, train__stage3__lr=1e-3), tmp_path / "b", progress=False, owner="trial b",
              callback=b_reports.append, store=waiter, evaluate_test=False)
    assert [(s["stage"], s["computed_by"]) for s in b["from_store"]] == [(1, "trial a"), (2, "trial a")]
    assert [r.from_store for r in b_reports] == [True, True, True, False]


def test_a_resumed_holder_takes_the_stage_another_trial_published_meanwhile(tmp_path, tiny_root):
    """Killed after epoch 1 of stage 1; its lease expires and another trial computes and publishes stage 1
    while it is down. Resumed, it takes that result in place of its partial stage: its epoch 2 of stage 1
    comes from the store, no stage-1 epoch is in its history twice, and it computes its own stage 2."""
    table = LeaseTable()
    cfg = tiny_config(tiny_root)
    with pytest.raises(Killed):
        train(cfg, tmp_path / "a", progress=False, callback=killed_at(1), owner="trial a",
              store=DyingStore(str(tmp_path / "store"), lease_seconds=0.3, leases=table))
    b_cfg = tiny_config(tiny_root, model__alpha=3.0)  # shares stage 1 only
    b = train(b_cfg, tmp_path / "b", progress=False, owner="trial b", evaluate_test=False,
              store=store_on(tmp_path / "store", table, lease_seconds=0.3))
    assert b["from_store"] == []
    reports = []
    a = train(cfg, tmp_path / "a", resume=True, progress=False, callback=reports.append, owner="trial a",
              store=store_on(tmp_path / "store", table, lease_seconds=0.3), evaluate_test=False)
    assert [(s["stage"], s["computed_by"]) for s in a["from_store"]] == [(1, "trial b")]
    assert [(r.global_epoch, r.from_store) for r in reports] == [(2, True), (3, False), (4, False)]
    assert stage_rows(a) == [(1, 1), (1, 2), (2, 1), (3, 1)]
    assert a["stages"]["1"]["best_val_top1"] == b["stages"]["1"]["best_val_top1"]
