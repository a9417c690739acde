"""The broker's ceiling for our message pattern: a bare kombu loop on the worker's own topology.

It consumes the host's quorum queue (same prefetch as the worker), publishes two confirmed,
persistent events of the worker's size to the events exchange (with its stream bound), and
acks. No parsing, no libvirt, no journal: what the broker and py-amqp allow at best. As the
worker does, it publishes the events of every delivery it holds, waits once for all their
confirms, then acks those deliveries at once: a loop that waited for each confirm in turn
measured the broker's confirm latency, not its capacity, and at a slow moment of the broker
it fell below the worker it is meant to bound.

Run in its own process (`python -m bench.broker_ceiling PREFIX HOST PREFETCH`), like the worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from kombu import Connection, Consumer, Producer

from bench.common import (
    BROKER,
    EventTap,
    Process,
    measure_consumer,
    percentile,
    say,
    topology,
    unique,
)
from worker import events
from worker.config import Settings
from worker.topology import Topology


def _events(host: str, rid: str, vm: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """`before` and `after` events with the fields the worker puts in them."""
    common: dict[str, Any] = dict(
        request_id=rid,
        correlation_id=None,
        vm_uuid=vm.get("uuid"),
        vm_name=vm.get("name"),
        redelivered=False,
    )
    before = events.op_event(host, "start_vm", "before", recovered=False, **common)
    after = events.op_event(
        host,
        "start_vm",
        "after",
        attempt=1,
        duration_ms=1.234,
        state="running",
        hooks=[],
        noop=False,
        **common,
    )
    return [before, after]


def serve(prefix: str, host: str, prefetch: int) -> None:
    topo = Topology(prefix, host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    conn = Connection(BROKER)  # confirms tracked here, not waited for publish by publish
    conn.connect()
    ch = conn.channel()
    ch.basic_qos(0, prefetch, False)
    events_ch = conn.channel()
    events_ch.confirm_select()
    unconfirmed: set[int] = set()
    published = 0

    def confirmed(tag: int, multiple: bool) -> None:
        unconfirmed.difference_update([t for t in unconfirmed if t <= tag] if multiple else [tag])

    def refused(tag: int, multiple: bool) -> None:
        raise RuntimeError(f"the broker refused event {tag}")

    events_ch.events["basic_ack"].add(confirmed)
    events_ch.events["basic_nack"].add(refused)
    producer = Producer(events_ch)
    got: list[Any] = []

    # deliveries are only collected in the callback, and handled between reads of the socket
    consumer = Consumer(
        ch, queues=[topo.host_queue], on_message=got.append, no_ack=False, auto_declare=False
    )
    consumer.consume()
    print('"consuming"', flush=True)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.1)
        if not got:
            continue
        batch, got[:] = list(got), []
        for m in batch:
            vm = json.loads(m.body).get("vm") or {}
            for rk, ev in _events(host, m.properties.get("message_id"), vm):
                events.publish(producer, topo.events, rk, ev)
                published += 1
                unconfirmed.add(published)
        while unconfirmed:  # one wait for the batch's confirms; deliveries go on arriving
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=1.0)
        ch.basic_ack(batch[-1].delivery_tag, multiple=True)
    with contextlib.suppress(Exception):
        conn.release()


def loop_process(log_path: Path, prefix: str, host: str) -> Process:
    prefetch = Settings().effective_prefetch  # the worker's default
    return Process(
        [sys.executable, "-m", "bench.broker_ceiling", prefix, host, str(prefetch)],
        log_path,
        dict(os.environ),
        '"consuming"',
    )


def run_once(tmp: Path, n: int, m: int) -> dict[str, Any]:
    """One run: throughput over a pre-filled queue of n, then m closed-loop round trips."""
    prefix, host = unique("bench"), unique("h")
    with topology(prefix, host) as topo:
        tap = EventTap(topo.events).start()
        loop = loop_process(tmp / f"loop-{prefix}.log", prefix, host)
        try:
            got = measure_consumer(topo, host, tap, loop, n, m)
        finally:
            loop.stop()
            tap.stop()
    lat = got.latencies
    say(f"broker ceiling: {got.ops_s:.0f} msg/s, round trip p50 {percentile(lat, 50) * 1e3:.2f} ms")
    return {
        "ops_s": got.ops_s,
        "rtt_p50_ms": percentile(lat, 50) * 1e3,
        "rtt_p99_ms": percentile(lat, 99) * 1e3,
        "event_bytes": got.event_bytes,
        **got.cpu,
    }


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]))
