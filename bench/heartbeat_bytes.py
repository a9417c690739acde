"""What a host's heartbeats and inventories put into `<prefix>.events.log` a day, measured.

A worker runs on `test:///default` with `--vms` defined domains (define_vm, as a control plane
sends it) and `--hooks` hook scripts; once the definitions are done, its next `--beats`
heartbeats (at a 1 s interval, to be quick) and the inventory events meanwhile are weighed
(bodies as published: what the stream stores, less RabbitMQ's few dozen bytes of framing a
message). The bytes per host per day follow for the default intervals: one heartbeat every
30 s, an inventory snapshot every hour, plus one inventory per change.

    python -m bench.heartbeat_bytes                     # this checkout
    python -m bench.heartbeat_bytes --source ../older   # another checkout's worker: before/after

A worker from before `host.inventory` carries the inventory in every heartbeat; the same
arithmetic then gives its figure. Results in docs/performance.md (Events a fleet can afford).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from kombu import Exchange

from bench.common import (
    REPO,
    EventTap,
    OpPublisher,
    delete_topology,
    hooks_root,
    say,
    unique,
    vm_spec,
    worker_process,
    write_hook,
)
from bench.common import broker_conn as connect

DAY_S = 86_400
HEARTBEAT_S = 30.0  # the defaults (worker/config.py)
INVENTORY_S = 3600.0
HOOKS = ("before_vm_start", "after_vm_start", "before_vm_destroy", "after_vm_destroy")


def measure(source: Path | None, vms: int, hooks: int, beats: int, tmp: Path) -> dict[str, Any]:
    prefix, host = unique("benchhb"), unique("hb")
    root = hooks_root(tmp)
    for i in range(hooks):
        write_hook(root, HOOKS[i % len(HOOKS)], f"{10 + i}_hook", f"#!/bin/sh\n# {i}\nexit 0\n")
    ops = Exchange(f"{prefix}.ops", "topic", durable=True)
    events = Exchange(f"{prefix}.events", "topic", durable=True)
    with connect() as conn:  # exchanges only: the worker declares its streams, as it would
        for ex in (ops, events):
            ex.bind(conn.default_channel).declare()
    tap = EventTap(events).start()
    proc = worker_process(
        tmp / "worker.log",
        host=host,
        prefix=prefix,
        state_dir=tmp / "state",
        hooks_root=root,
        pythonpath=[str(source)] if source else (),
        cwd=source or REPO,
        heartbeat_interval=1.0,
    )
    try:
        proc.start()
        pub = OpPublisher(ops, host)
        rids = []
        for i in range(vms):
            body = {"version": 1, "op": "define_vm", "vm": vm_spec(f"hb{i}")}
            rids.append(pub.publish(json.dumps(body).encode()))
        pub.close()
        tap.wait_all(rids, timeout=300)
        settled = time.monotonic() + 1.5  # the first beat after the last definition lists it

        def beats_after() -> list[Any]:
            key = f"{host}.host.heartbeat"
            return [s for s in list(tap.seen) if s.routing_key == key and s.at > settled]

        end = time.monotonic() + beats * 3 + 30
        while len(beats_after()) < beats and time.monotonic() < end:
            time.sleep(0.2)
        got = beats_after()[:beats]
        if len(got) < beats:
            raise RuntimeError(f"{len(got)} heartbeats of {beats}: {proc.tail()}")
        inventories = [s for s in tap.seen if s.routing_key == f"{host}.host.inventory"]
        online = [s.size for s in tap.seen if s.routing_key == f"{host}.host.online"]
    finally:
        proc.stop()
        tap.stop()
        delete_topology(prefix, [host])
    beat = statistics.median(s.size for s in got)
    inventory = max((s.size for s in inventories), default=0)
    per_day = DAY_S / HEARTBEAT_S * beat + (DAY_S / INVENTORY_S * inventory if inventory else 0)
    return {
        "source": str(source or "this checkout"),
        "vms": vms,
        "hooks": hooks,
        "heartbeat_bytes": int(beat),
        "online_bytes": online[0] if online else None,
        "inventory_bytes": inventory or None,
        "inventory_events_seen": len(inventories),
        "bytes_per_host_day": int(per_day),
        "bytes_per_change": inventory or None,
        "fleet_5000_gb_day": round(per_day * 5000 / 1e9, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, help="the checkout whose worker runs (default: this)")
    ap.add_argument("--vms", type=int, default=100)
    ap.add_argument("--hooks", type=int, default=8)
    ap.add_argument("--beats", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="benchhb") as tmp:
        say(f"a worker with {a.vms} domains and {a.hooks} hooks, {a.beats} heartbeats")
        res = measure(a.source.resolve() if a.source else None, a.vms, a.hooks, a.beats, Path(tmp))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
