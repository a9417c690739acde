"""The fleet server's pages timed on a store: each page and API answer rendered whole (the ASGI
app in process, through Starlette's test client: routing, queries, templates, no network).

    python -m bench.fleet --build sqlite:////tmp/big/fleet.db   # 1,000 hosts, 50,000 VMs, 5M events
    python -m bench.fleet_page sqlite:////tmp/big/fleet.db

Prints JSON: per path, the median and p95 of `--reps` renders (after two warm-up renders), and
the median CPU time of a render in this process (every thread): steadier than wall time on a
busy machine."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any


def time_pages(url: str, reps: int = 10) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from worker.config import Settings
    from worker.fleet import queries as q
    from worker.fleet.app import create_app
    from worker.fleet.store import open_store

    engine = open_store(url, create=False)
    with engine.connect() as c:
        host = q.list_hosts(c, limit=1)["items"][0]["host"]
        vm = q.list_vms(c, host=host, limit=1)["items"][0]["uuid"]
        failed = q.failures(c, limit=1)["items"]
        rid = failed[0]["request_id"] if failed else q.list_requests(c, limit=1)["items"][0]
    paths = [
        "/",
        "/api/v1/summary",
        "/hosts",
        f"/hosts/{host}",
        "/vms",
        f"/vms/{vm}",
        "/requests",
        f"/requests/{rid}",
        "/failures",
        "/requests?text=locked",
    ]
    out: dict[str, Any] = {}
    with TestClient(create_app(engine, Settings())) as client:
        for path in paths:
            for _ in range(2):
                client.get(path).raise_for_status()
            times, cpu = [], []
            for _ in range(reps):
                t, c0 = time.perf_counter(), time.process_time()
                r = client.get(path)
                times.append((time.perf_counter() - t) * 1e3)
                cpu.append((time.process_time() - c0) * 1e3)
                r.raise_for_status()
            times.sort()
            out[path] = {
                "median_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 1),
                "cpu_ms": round(statistics.median(cpu), 1),  # this process, every thread
                "bytes": len(r.content),
            }
    engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fleet_page", description=__doc__)
    ap.add_argument("url", help="the store (SQLAlchemy URL)")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    print(json.dumps(time_pages(args.url, args.reps), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
