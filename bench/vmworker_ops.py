"""vmworker itself: `start_vm` on test:///default through `python -m worker run`, default
settings, empty hook directories, journal on.

Throughput is measured over a pre-filled queue (the rate between the first and the last
`after` event); latency with one operation in flight, from the publish (confirmed) to the
`after` event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import (
    EventTap,
    OpPublisher,
    Process,
    closed_loop,
    hooks_root,
    measure_consumer,
    percentile,
    rss_kib,
    say,
    start_body,
    topology,
    unique,
    worker_process,
)


def start_worker(tmp: Path, prefix: str, host: str, **kw: Any) -> Process:
    run_dir = tmp / prefix
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
    prefix, host = unique("bench"), unique("h")
    with topology(prefix, host) as topo:
        tap = EventTap(topo.events).start()
        worker = start_worker(tmp, prefix, host, **worker_kw)
        try:
            worker.start()
            pub = OpPublisher(topo.ops, host)
            try:
                closed_loop(pub, tap, [start_body()])  # warm-up: first imports, fork server
                return closed_loop(pub, tap, (start_body() for _ in range(m)))
            finally:
                pub.close()
        finally:
            worker.stop()
            tap.stop()
