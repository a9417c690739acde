"""Reading events: live from `<prefix>.events`, or from the start of the `<prefix>.events.log`
stream. Used by `vmworker events`, the monitor, history and the tests."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import structlog
from kombu import Connection, Consumer, Queue
from kombu.message import Message

from worker.topology import Topology

log = structlog.get_logger()


def live_queue(topology: Topology, host: str | None = None) -> Queue:
    """A private, auto-deleted queue bound to the events of one host (or all)."""
    return Queue(
        f"{topology.prefix}.events.tap.{uuid.uuid4().hex[:12]}",
        topology.events,
        routing_key=f"{host}.#" if host else "#",
        exclusive=True,
        auto_delete=True,
        durable=False,
    )


def vouched(event: dict[str, Any], routing_key: str | None) -> bool:
    """False when an event names a host other than the first word of its routing key. The
    broker lets a host's own identity publish only keys starting with its host id
    (docs/security.md), so the key, not the body, says which host spoke: a body claiming
    another host is forged."""
    if not routing_key:
        return True
    speaker = routing_key.split(".", 1)[0]
    data = event.get("data")
    claimed = data.get("host") if isinstance(data, dict) else None
    source = str(event.get("source", ""))
    if claimed is not None and claimed != speaker:
        return False
    return not (source.startswith("vmworker://") and source != f"vmworker://{speaker}")


def read_events(
    conn: Connection,
    topology: Topology,
    *,
    host: str | None = None,
    vm: str | None = None,
    from_start: bool = False,
    follow: bool = False,
    idle_timeout: float = 1.0,
    queue: Queue | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield events (CloudEvent dicts) in order. Without `follow`, stop once nothing has
    arrived for `idle_timeout` seconds."""
    q = topology.events_log_from("first") if from_start else queue or live_queue(topology, host)
    buf: list[dict[str, Any]] = []

    def on_message(message: Message) -> None:
        try:
            ev = json.loads(message.body)
        except ValueError:
            ev = None
        message.ack()
        if not isinstance(ev, dict):
            return
        if not vouched(ev, message.delivery_info.get("routing_key")):
            log.warning(
                "event.forged",
                routing_key=message.delivery_info.get("routing_key"),
                source=ev.get("source"),
            )
            return
        data = ev.get("data") or {}
        if (
            host
            and data.get("host") != host
            and not str(ev.get("source", "")).endswith(f"//{host}")
        ):
            return
        if vm and ev.get("subject") != vm:
            return
        buf.append(ev)

    with conn.channel() as ch:
        ch.basic_qos(0, 500, False)
        consumer = Consumer(ch, queues=[q], on_message=on_message, no_ack=False)
        consumer.consume()
        last = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.2)
            if buf:
                last = time.monotonic()
                yield from buf
                buf.clear()
            elif not follow and time.monotonic() - last > idle_timeout:
                return
