"""The Celery baseline, measured exactly like vmworker (see bench/celery_app.py for the task)."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    EventTap,
    Process,
    broker_conn,
    delete_topology,
    drain,
    percentile,
    rate,
    say,
    start_body,
    topology,
    unique,
    wait_depth,
)


def available() -> str | None:
    """None if Celery can be imported, else why not."""
    try:
        import celery  # noqa: F401
    except ImportError as exc:
        return f"celery is not installed ({exc}); `make bench` installs the bench extra"
    return None


def run_once(tmp: Path, n: int, m: int) -> dict[str, Any]:
    import time

    from bench.celery_app import TASK, make_app, names

    prefix, host = unique("bench"), unique("h")
    app = make_app(prefix, host)
    q = names(prefix)
    env = {**os.environ, "BENCH_PREFIX": prefix, "BENCH_HOST": host}
    worker = Process(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(os.cpu_count() or 1),
            "--prefetch-multiplier",
            "1",
            "--queues",
            q["queue"],
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
        ],
        tmp / f"celery-{prefix}.log",
        env,
        "ready.",
    )
    try:
        with topology(prefix, host) as topo:
            with broker_conn() as conn, conn.channel() as ch:
                for queue in app.conf.task_queues:
                    queue.bind(ch).declare()
            tap = EventTap(topo.events).start()
            try:
                with app.producer_or_acquire() as producer:
                    rids = []
                    for _ in range(n):
                        rid = str(uuid.uuid4())
                        app.send_task(
                            TASK, args=[start_body().decode()], task_id=rid, producer=producer
                        )
                        rids.append(rid)
                wait_depth(q["queue"], n)
                seen, cpu = drain(tap, [worker], rids)
                ops_s = rate([s.at for s in seen])
                lat: list[float] = []
                with app.producer_or_acquire() as producer:
                    for _ in range(m):
                        rid = str(uuid.uuid4())
                        t0 = time.monotonic()
                        app.send_task(
                            TASK, args=[start_body().decode()], task_id=rid, producer=producer
                        )
                        s = tap.wait_terminal(rid)
                        lat.append(s.at - t0)
                size = max(s.size for s in seen)
            finally:
                worker.stop()
                tap.stop()
    finally:
        with contextlib.suppress(Exception):
            app.close()
        delete_topology(prefix, [], queues=[q["queue"]], exchanges=[q["exchange"]])
    say(f"celery: {ops_s:.0f} ops/s, latency p50 {percentile(lat, 50) * 1e3:.2f} ms")
    return {
        "ops_s": ops_s,
        "lat_p50_ms": percentile(lat, 50) * 1e3,
        "lat_p99_ms": percentile(lat, 99) * 1e3,
        "event_bytes": size,
        **cpu,
    }
