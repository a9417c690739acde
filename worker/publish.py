"""Publishing operation messages: what the control plane does, for the CLI, tests and replay."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from amqp.exceptions import NotFound
from kombu import Connection, Producer

from worker.topology import Topology


class NoWorkerQueue(Exception):
    """No queue is bound for the host: the broker would drop the message (the ops-log stream
    takes every key, so `mandatory` would not tell)."""

    def __init__(self, host: str, queue: str) -> None:
        self.host, self.queue = host, queue
        super().__init__(
            f"no worker queue exists for host {host!r} (no queue {queue}); nothing sent. Check"
            f" the host id; `vmworker broker setup --host {host}` declares its queue ahead of"
            " its worker"
        )


def require_host_queue(conn: Connection, topology: Topology, host: str) -> None:
    """NoWorkerQueue unless the operation queue of `host` exists (a passive declare: needs no
    permission). A queue deleted between this check and the publish still loses the message."""
    name = Topology(topology.prefix, host).host_queue.name
    try:
        with conn.channel() as ch:  # a 404 closes this channel only
            ch.queue_declare(name, passive=True)
    except conn.channel_errors as exc:
        # kombu's in-memory transport says NOT_FOUND in its text only
        if isinstance(exc, NotFound) or "NOT_FOUND" in str(exc):
            raise NoWorkerQueue(host, name) from None
        raise


def parse_kv(pairs: tuple[str, ...] | list[str], *, typed: bool) -> dict[str, Any]:
    """`k=v` pairs; with `typed`, values that parse as JSON (true, 5, 2.5) keep their type."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        if typed:
            try:
                out[key] = json.loads(value)
                continue
            except ValueError:
                pass
        out[key] = value
    return out


def build_body(
    op: str,
    vm: dict[str, Any],
    params: dict[str, Any] | None = None,
    custom: dict[str, str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"version": 1, "op": op, "vm": vm}
    if params:
        body["params"] = params
    if custom:
        body["custom"] = custom
    return body


def publish_op(
    conn: Connection,
    topology: Topology,
    body: dict[str, Any] | bytes,
    *,
    request_id: str | None = None,
    correlation_id: str | None = None,
    deadline: datetime | None = None,
    headers: dict[str, Any] | None = None,
    user_id: str | None = None,
    routing_key: str | None = None,
    check_queue: bool = True,
) -> str:
    """Publish one operation message to `<prefix>.ops` (confirmed); returns its request id.
    NoWorkerQueue, and nothing sent, if no queue takes the host's key (unless `check_queue`
    is false)."""
    host = routing_key or topology.host
    if check_queue:
        require_host_queue(conn, topology, host)
    request_id = request_id or str(uuid.uuid4())
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = dict(headers or {})
    if deadline is not None:
        hdrs["x-deadline"] = deadline.astimezone(UTC).isoformat()
    props: dict[str, Any] = {}
    if user_id:
        props["user_id"] = user_id
    with conn.channel() as ch:
        Producer(ch).publish(
            raw,
            exchange=topology.ops,
            routing_key=host,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            message_id=request_id,
            correlation_id=correlation_id,
            timestamp=int(datetime.now(UTC).timestamp()),
            headers=hdrs,
            retry=True,
            declare=[topology.ops],
            **props,
        )
    return request_id
