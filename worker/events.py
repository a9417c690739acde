"""Events (host -> everyone): CloudEvents 1.0 structured JSON on the `<prefix>.events` exchange.

Every event is built by `cloud_event` (or copied by `as_duplicate`), which bounds it
(`worker.bounds`: each string and the whole event have a documented maximum size); `encode`
checks the size again, for events built or changed by hand.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from worker.bounds import EVENT_MAX, bound, encode_plain

CONTENT_TYPE = "application/cloudevents+json"
PHASES = ("before", "after", "fail")
PROGRESS = "progress"  # a running operation's news; never terminal
_WORD = re.compile(r"[^A-Za-z0-9_-]+")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def routing_key(host: str, *words: str) -> str:
    """`<host>.<op>.<phase>`, `<host>.state.<state>`, `<host>.host.heartbeat`; words sanitised."""
    return ".".join([host, *(_WORD.sub("_", w) or "unknown" for w in words)])


def cloud_event(
    host: str,
    type_words: tuple[str, ...],
    *,
    subject: str | None,
    request_id: str | None,
    data: dict[str, Any],
    trace: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A structured-mode CloudEvent, bounded. `type_words` is e.g. ("start_vm", "after");
    `trace`: the W3C `traceparent` (and `tracestate`) it carries (worker/tracing.py)."""
    ev: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": f"vmworker://{host}",
        "type": "vmworker." + ".".join(type_words),
        "time": now_iso(),
        "datacontenttype": "application/json",
        "data": data,
    }
    if subject:
        ev["subject"] = subject
    if request_id:
        ev["requestid"] = request_id
    if trace:
        ev.update(trace)  # the CloudEvents distributed-tracing extension
    return bound(ev)


def op_event(
    host: str,
    op: str,
    phase: str,
    *,
    request_id: str | None,
    correlation_id: str | None,
    vm_uuid: str | None,
    vm_name: str | None,
    trace: Mapping[str, str] | None = None,
    **fields: Any,
) -> tuple[str, dict[str, Any]]:
    """(routing key, event) for one phase of one operation; `fields` go into `data`."""
    assert phase in PHASES or phase == PROGRESS, phase
    data: dict[str, Any] = {
        "op": op,
        "phase": phase,
        "host": host,
        "vm": {"uuid": vm_uuid, "name": vm_name},
        "request_id": request_id,
        "correlation_id": correlation_id,
    }
    data.update(fields)
    ev = cloud_event(
        host, (op, phase), subject=vm_uuid, request_id=request_id, data=data, trace=trace
    )
    return routing_key(host, op, phase), ev


def as_duplicate(
    event: dict[str, Any], *, redelivered: bool, trace: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A recorded terminal event, re-sent for a request that already finished; it carries the
    trace context of the message that asked again (`trace`), not the recorded one's."""
    ev = json.loads(json.dumps(event))
    ev.pop("traceparent", None)
    ev.pop("tracestate", None)
    if trace:
        ev.update(trace)
    ev["id"] = str(uuid.uuid4())
    ev["time"] = now_iso()
    ev["data"]["duplicate"] = True
    ev["data"]["original_event_id"] = event["id"]
    ev["data"]["redelivered"] = redelivered
    return bound(ev)


def encode(event: dict[str, Any]) -> bytes:
    """The event as published: compact JSON, at most EVENT_MAX bytes."""
    body = encode_plain(event)
    return body if len(body) <= EVENT_MAX else encode_plain(bound(event))


def publish(producer: Any, exchange: Any, routing_key: str, event: dict[str, Any]) -> None:
    """Publish one event with a kombu `Producer`, as every publisher of events does:
    persistent, CloudEvents JSON, the event's id as the message id."""
    producer.publish(
        encode(event),
        exchange=exchange,
        routing_key=routing_key,
        content_type=CONTENT_TYPE,
        content_encoding="utf-8",
        delivery_mode=2,
        message_id=event["id"],
        retry=False,
    )
