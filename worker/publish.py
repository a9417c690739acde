"""Publishing operation messages: what the control plane does, for the CLI, tests and replay."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from kombu import Connection, Producer

from worker.topology import Topology


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
) -> str:
    """Publish one operation message to `<prefix>.ops` (confirmed); returns its request id."""
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
            routing_key=routing_key or topology.host,
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
