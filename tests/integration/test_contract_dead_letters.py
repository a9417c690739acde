"""A dead letter is the original message: its body, every AMQP property and every header its
publisher set, plus the worker's reason headers (docs/protocol.md, Dead letters)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import amqp

from tests.support import broker_conn, drain_queue


def test_a_dead_letter_keeps_every_property_and_header_of_the_original(env, tap, start_worker):
    start_worker()
    rid = str(uuid.uuid4())
    body = json.dumps({"op": "pause_vm", "vm": {"uuid": "nope"}}).encode()
    stamp = datetime(2026, 11, 22, 4, 15, 43, tzinfo=UTC)
    props = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
        "priority": 7,
        "correlation_id": "corr-1",
        "reply_to": "cp.replies",
        "expiration": "600000",
        "message_id": rid,
        "timestamp": stamp,
        "type": "vm.op",
        "user_id": "guest",  # the test broker's user: the only one the broker lets us claim
        "app_id": "control-plane",
    }
    headers = {"x-tenant": "acme", "x-trace": "t-1", "x-number": 42}
    with broker_conn() as conn:
        ch = conn.connection.channel()  # py-amqp: every property, as sent
        sent = {**props, "timestamp": int(stamp.timestamp())}
        ch.basic_publish(
            amqp.Message(body, application_headers=headers, **sent),
            exchange=env.topology.ops.name,
            routing_key=env.host,
        )
        ch.close()
    fail = tap.wait_terminal(rid)
    assert fail["data"]["error"]["code"] == "invalid"
    with broker_conn() as conn:
        (dead,) = drain_queue(conn, env.topology.dead_queue.name)
    got = dead.properties
    for name, value in props.items():
        if name == "expiration":  # kept as a header: the dead letter itself must not expire
            assert "expiration" not in got
            assert dead.headers["x-original-expiration"] == value
        elif name == "timestamp":
            assert got[name] == int(value.timestamp())  # seconds, as sent
        else:
            assert got.get(name) == value, name
    for name, value in headers.items():
        assert dead.headers[name] == value
    assert "x-delivery-count" not in dead.headers  # the broker's, not the publisher's
    assert dead.headers["x-original-user-id"] == "guest"
    assert dead.headers["x-vmworker-error-code"] == "invalid"
    assert dead.headers["x-vmworker-error-source"] == "validation"
    assert (dead.body.encode() if isinstance(dead.body, str) else dead.body) == body


def test_a_dead_letter_adds_no_property_the_publisher_did_not_set(env, tap, start_worker):
    start_worker()
    rid = str(uuid.uuid4())
    with broker_conn() as conn:
        ch = conn.connection.channel()
        ch.basic_publish(
            amqp.Message(b"{", message_id=rid), exchange=env.topology.ops.name, routing_key=env.host
        )
        ch.close()
    assert tap.wait_terminal(rid)["data"]["error"]["code"] == "not_json"
    with broker_conn() as conn:
        (dead,) = drain_queue(conn, env.topology.dead_queue.name)
    assert set(dead.properties) - {"application_headers"} == {"message_id"}
    assert set(dead.headers) == {
        "x-vmworker-error-code",
        "x-vmworker-error-source",
        "x-vmworker-reason",
        "x-original-user-id",
    }
