"""vmworker itself: `start_vm` on test:///default through `python -m worker run`, default
settings, empty hook directories, journal on.

Throughput is measured over a pre-filled queue (the rate between the first and the last
`after` event); latency with one operation in flight, from the publish (confirmed) to the
`after` event.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    EventTap,
    OpPublisher,
    Process,
    broker_conn,
    closed_loop,
    delete_topology,
    drain,
    hooks_root,
    measure_consumer,
    percentile,
    prefill,
    rate,
    say,
    start_body,
    topology,
    unique,
    vm_spec,
    worker_process,
)
from bench.meter import rss_kib
from worker.topology import Topology


def start_worker(tmp: Path, prefix: str, host: str, **kw: Any) -> Process:
    """A worker process for `host`, with a run directory (journal, log, hooks) of its own: two
    workers on one journal refuse to start, and on one log each would see the other's
    readiness."""
    run_dir = tmp / prefix / host
    run_dir.mkdir(parents=True, exist_ok=True)
    root = kw.pop("hooks_root", None) or hooks_root(run_dir)
    return worker_process(
        run_dir / "worker.log",
        host=host,
        prefix=prefix,
        state_dir=run_dir / "state",
        hooks_root=root,
        **kw,
    )


@contextlib.contextmanager
def worker_running(tmp: Path, **worker_kw: Any) -> Iterator[tuple[Process, EventTap, OpPublisher]]:
    """A worker process (`worker_kw` for start_worker) on a topology of its own, started, a tap
    on its events and a publisher to it; all stopped at the end."""
    prefix, host = unique("bench"), unique("h")
    with topology(prefix, host) as topo:
        tap = EventTap(topo.events).start()
        worker = start_worker(tmp, prefix, host, **worker_kw)
        pub = None
        try:
            worker.start()
            pub = OpPublisher(topo.ops, host)
            yield worker, tap, pub
        finally:
            if pub is not None:
                pub.close()
            worker.stop()
            tap.stop()


def run_once(tmp: Path, n: int, m: int, **worker_kw: Any) -> dict[str, Any]:
    """One run: n operations from a pre-filled queue, then m closed-loop operations."""
    prefix, host = unique("bench"), unique("h")
    with topology(prefix, host) as topo:
        tap = EventTap(topo.events).start()
        worker = start_worker(tmp, prefix, host, **worker_kw)
        try:
            got = measure_consumer(topo, host, tap, worker, n, m)
            rss = rss_kib(worker.pid)
        finally:
            worker.stop()
            tap.stop()
    lat = got.latencies
    out = {
        "ops_s": got.ops_s,
        "lat_p50_ms": percentile(lat, 50) * 1e3,
        "lat_p99_ms": percentile(lat, 99) * 1e3,
        "event_bytes": got.event_bytes,
        "rss_mib": rss.get("VmRSS", 0) / 1024,
        **got.cpu,
    }
    say(
        f"vmworker: {got.ops_s:.0f} ops/s, latency p50 {out['lat_p50_ms']:.2f} ms"
        f" p99 {out['lat_p99_ms']:.2f} ms"
    )
    return out


def latency_once(tmp: Path, m: int, **worker_kw: Any) -> list[float]:
    """m closed-loop operations through a worker started with `worker_kw`; seconds each."""
    with worker_running(tmp, **worker_kw) as (_, tap, pub):
        closed_loop(pub, tap, [start_body()])  # warm-up: first imports, fork server
        return closed_loop(pub, tap, (start_body() for _ in range(m)))


def split_once(tmp: Path, n: int, processes: int) -> dict[str, Any]:
    """Not a mode vmworker ships: what several worker processes on one machine would give if
    the broker routed each VM's operations to one of them. Each process is a whole worker on
    its own queue (here: its own host id); the n start_vm messages are split between the
    queues by VM uuid, as a consistent-hash exchange keyed on the VM would split them. Only
    the throughput and the CPU are measured (the per-VM order holds within each queue)."""
    prefix = unique("bench")
    hosts = [unique("h") for _ in range(processes)]
    topos = [Topology(prefix, h) for h in hosts]
    try:
        with broker_conn() as conn:
            for t in topos:
                t.declare(conn)
        tap = EventTap(topos[0].events).start()
        specs = [vm_spec() for _ in range(n)]
        rids: list[str] = []
        for i, (t, h) in enumerate(zip(topos, hosts, strict=True)):
            mine = [s for s in specs if uuid.UUID(s["uuid"]).int % processes == i]
            rids += prefill(t.ops, h, t.host_queue.name, [start_body(s) for s in mine])
        workers = [start_worker(tmp, prefix, h) for h in hosts]
        try:
            seen, cpu = drain(tap, workers, rids)
        finally:
            for w in workers:
                w.stop()
            tap.stop()
    finally:
        delete_topology(prefix, hosts)
    ops_s = rate([s.at for s in seen])
    say(f"vmworker, {processes} processes, VMs split: {ops_s:.0f} ops/s")
    return {"ops_s": ops_s, "processes": processes, **cpu}
