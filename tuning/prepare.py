"""``python -m tuning.prepare {videos,fill,egtea,epic} ... --address auto``: ``egomodel.prepare`` with its clips
run as Ray tasks across a cluster (one CPU each), so the cluster's CPUs prepare a large data set before a
search. Same arguments, same files, same resumability; ``--workers`` is ignored (Ray places the tasks).

Every node must see the output root and the input files (a shared mount): before any work, one task on
each node checks that it sees a token file the driver wrote into the root, and the first clip's input.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from egomodel.data.prepare.clip import ClipJob, PrepareOptions
from egomodel.data.prepare.run import Outcome, Work
from egomodel.data.prepare.sources import FrameFiles, PrepareError
from egomodel.prepare import build_parser, execute, guarded

REPO = Path(__file__).resolve().parent.parent
IN_FLIGHT_PER_CPU = 2  # tasks submitted ahead of the cluster's CPUs (EPIC has ~90k clips: not all at once)


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (auto, HOST:PORT, ray://...) or, without one, start a local Ray."""
    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")  # tasks at normal priority, as the cluster files start nodes
    try:
        if address is None:
            ray.init(address="local", runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise PrepareError(f"cannot connect to the Ray cluster at {address}: {exc}") from None


def _sees(paths: Sequence[str], token: str) -> tuple[str, list[str]]:
    """On one node: its address and the paths it cannot see (the first one must hold ``token``)."""
    import ray

    missing = [p for p in paths if not os.path.exists(p)]
    if paths[0] not in missing and Path(paths[0]).read_text() != token:
        missing.append(paths[0])
    return ray.util.get_node_ip_address(), missing


def check_visible(root: Path, jobs: Sequence[ClipJob]) -> int:
    """PrepareError unless every alive node sees ``root`` and the first job's input; returns the nodes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    probe = root / f".prepare-visible-{token}"
    probe.write_text(token)
    paths = [str(probe.resolve())]
    if jobs:
        source = jobs[0].source
        paths.append(str(source.tar or source.files[0]) if isinstance(source, FrameFiles) else str(source.video))
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        task = ray.remote(num_cpus=0)(_sees)
        results = ray.get([task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                           .remote(paths, token) for n in nodes])
    finally:
        probe.unlink()
    for node, missing in results:
        if missing:
            raise PrepareError(f"node {node} does not see {', '.join(missing)}: the output root and the inputs must "
                               "be on storage every node mounts at the same path")
    return len(nodes)


def _clip_task(work: Work, job: ClipJob, root: str, options: PrepareOptions):
    import cv2

    cv2.setNumThreads(1)  # a task has one CPU
    return work(job, root, options)


def ray_executor(work: Work, jobs: Sequence[ClipJob], root: Path, options: PrepareOptions) -> Iterator[Outcome]:
    """Each clip as a Ray task (one CPU), at most ``IN_FLIGHT_PER_CPU`` per cluster CPU in flight."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=2)(_clip_task)
    limit = max(1, int(ray.cluster_resources().get("CPU", 1) * IN_FLIGHT_PER_CPU))
    waiting = list(reversed(jobs))
    pending: dict = {}
    while waiting or pending:
        while waiting and len(pending) < limit:
            job = waiting.pop()
            pending[task.remote(work, job, str(root), options)] = job
        done, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(done[0])
        try:
            yield job, ray.get(done[0])
        except ray.exceptions.RayTaskError as exc:
            yield job, exc.cause if isinstance(exc.cause, Exception) else exc


def _address(parser) -> None:
    parser.add_argument("--address", default=None, help="Ray cluster: auto, HOST:PORT or ray://HOST:10001; "
                        "default: start a local Ray")


def _before(root: Path, jobs: list[ClipJob]) -> None:
    import ray

    nodes = check_visible(Path(root), jobs)
    print(f"{len(jobs)} clips, {nodes} Ray node(s) with {int(ray.cluster_resources().get('CPU', 0))} CPUs")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser("python -m tuning.prepare", _address).parse_args(argv)

    def body() -> int:
        import ray

        connect(args.address)
        try:
            return execute(args, ray_executor, _before)
        finally:
            ray.shutdown()

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
