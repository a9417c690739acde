"""Malformed bodies, headers and properties thrown at the real worker (hypothesis): it never
crashes or stalls, and every message gets a `fail` event and lands in the dead-letter queue with
the reason in its headers. Messages go in batches, so thousands are tried in a few seconds."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kombu import Consumer, Producer, Queue

from tests.support import broker_conn, wait_depth, wait_until
from worker.messages import OP_MODELS

pytestmark = pytest.mark.timeout(240)

MAX_BODY = 8192
EXAMPLES = 45
REASON = ("x-vmworker-error-code", "x-vmworker-error-source", "x-vmworker-reason")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=10,
)


def _dumps(v: Any) -> bytes:
    return json.dumps(v).encode()


def _op(**kw: Any) -> dict[str, Any]:
    return {"version": 1, "op": "pause_vm", "vm": {"uuid": str(uuid.uuid4())}, **kw}


bodies = st.one_of(
    st.binary(max_size=200),  # not JSON, not UTF-8
    json_values.map(_dumps),  # JSON, mostly not an object
    # nested deeper than the parser's recursion limit (hypothesis raises it to ~2000 here)
    st.integers(2500, MAX_BODY).map(lambda n: b"[" * n),
    st.fixed_dictionaries(  # a known op with nonsense fields: schema violations
        {"version": st.just(1), "op": st.sampled_from(sorted(OP_MODELS))},
        optional={
            "vm": json_values,
            "params": json_values,
            "custom": json_values,
            "extra": json_values,
        },
    ).map(_dumps),
    st.text(max_size=30).filter(lambda s: s not in OP_MODELS).map(lambda s: _dumps(_op(op=s))),
    st.sampled_from([0, 2, "1", None, [1]]).map(lambda v: _dumps(_op(version=v))),
    st.dictionaries(  # custom properties a hook must never see
        st.sampled_from(["PATH", "LD_PRELOAD", "PYTHONPATH", "_hook_domxml", "1x", "a-b", ""]),
        st.text(max_size=10),
        min_size=1,
        max_size=3,
    ).map(lambda c: _dumps(_op(custom=c))),
    st.text(min_size=1, max_size=5).map(lambda v: _dumps(_op(custom={"k": v + "\x00"}))),
    st.integers(MAX_BODY, 4 * MAX_BODY).map(lambda n: _dumps(_op(custom={"blob": "x" * n}))),
    st.just(b"").map(lambda _: _dumps(_op())),  # well-formed, on a VM this host does not have
)
header_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.binary(max_size=30),
    lambda c: (
        st.lists(c, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=8), c, max_size=3)
    ),
    max_leaves=8,
)
messages = st.fixed_dictionaries(
    {
        "body": bodies,
        "headers": st.dictionaries(
            st.text(min_size=1, max_size=20).map(lambda k: "h-" + k), header_values, max_size=4
        ),
        # missing, empty, or a fresh id (a repeated one is a duplicate: tested elsewhere)
        "message_id": st.sampled_from(["fresh"] * 8 + [None, ""]),
        "content_type": st.sampled_from(["application/json", "text/plain", "", "a/b; x=\x01"]),
        "content_encoding": st.sampled_from(["utf-8", "binary", "gzip", "latin-1", "\x00?"]),
        # kombu undoes a `compression` header itself, and fails on these
        "compression": st.sampled_from([None] * 16 + ["zlib", "bzip2", "application/x-gzip", "?"]),
        # an x-deadline nobody can read (never a date: a valid past one is not poison)
        "deadline": st.none()
        | st.none()
        | st.none()
        | st.integers(-(2**63), 2**63 - 1)
        | st.booleans()
        | st.lists(st.integers(-(2**31), 2**31 - 1), max_size=2)
        | st.text(max_size=20).map(lambda s: "x" + s),
    }
)


def _drain(conn: Any, name: str, want: set[str], timeout: float) -> dict[str, Any]:
    got: dict[str, Any] = {}

    def on_message(m: Any) -> None:
        got[str(m.headers.get("x-test-tag"))] = m
        m.ack()

    with conn.channel() as ch:
        ch.basic_qos(0, 500, False)
        c = Consumer(
            ch,
            queues=[Queue(name, no_declare=True)],
            on_message=on_message,
            on_decode_error=lambda m, _exc: on_message(m),  # a `compression` header kept
        )
        c.consume()
        end = time.monotonic() + timeout
        while not want <= set(got) and time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.2)
        c.cancel()
    return got


def test_malformed_messages_never_crash_or_stall_the_worker_and_are_dead_lettered(
    env, tap, start_worker
):
    w = start_worker(max_body_bytes=MAX_BODY, concurrency=8)
    topo = env.topology
    total = {"sent": 0, "dead": 0, "codes": set()}
    conn = broker_conn()
    producer = Producer(conn.channel())
    batch_no = iter(range(10**6))

    @settings(
        max_examples=EXAMPLES,
        phases=[Phase.generate],  # no shrinking: each example is a round trip to a real worker
        report_multiple_bugs=False,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(st.lists(messages, min_size=40, max_size=80))
    def throw(batch: list[dict[str, Any]]) -> None:
        n = next(batch_no)
        tags = {f"{n}-{i}" for i in range(len(batch))}
        for i, m in enumerate(batch):
            tag = f"{n}-{i}"
            headers = {**m["headers"], "x-test-tag": tag}
            if m["deadline"] is not None:
                headers["x-deadline"] = m["deadline"]
            if m["compression"] is not None:
                headers["compression"] = m["compression"]
            mid = str(uuid.uuid4()) if m["message_id"] == "fresh" else m["message_id"]
            props = {"message_id": mid} if mid is not None else {}
            producer.publish(
                m["body"],
                exchange=topo.ops,
                routing_key=topo.host,
                content_type=m["content_type"],
                content_encoding=m["content_encoding"],
                headers=headers,
                correlation_id=tag,
                delivery_mode=2,
                **props,
            )
        dead = _drain(conn, topo.dead_queue.name, tags, timeout=15)
        missing = tags - set(dead)
        assert not missing, f"not dead-lettered: {sorted(missing)[:5]} of {len(tags)}"
        for tag, msg in dead.items():
            assert all(msg.headers.get(h) for h in REASON), (tag, msg.headers)
            total["codes"].add(msg.headers["x-vmworker-error-code"])

        # a fail event for each, found by its correlation id
        def failed() -> set[str]:
            return {
                e["data"].get("correlation_id")
                for e in list(tap.events)
                if e["data"].get("phase") == "fail"
            }

        wait_until(lambda: tags <= failed(), 20)
        no_event = tags - failed()
        assert not no_event, [
            (t, dead[t].headers.get("x-vmworker-error-code"), tap._thread.is_alive())
            for t in sorted(no_event)[:5]
        ]
        total["sent"] += len(batch)
        total["dead"] += len(dead)
        assert w.thread.is_alive() and w.service.stats.reconnects == 0

    try:
        t0 = time.monotonic()
        throw()
        elapsed = time.monotonic() - t0
    finally:
        conn.release()
    print(
        f"fuzz: {total['sent']} messages in {elapsed:.1f}s, {total['dead']} dead-lettered"
        f" with a reason; codes {sorted(total['codes'])}"
    )
    assert total["sent"] >= 1800
    # never a `before`: none of it was accepted as an operation to run, except the
    # well-formed ones on an unknown VM, which ran and failed
    befores = [e for e in tap.events if e["data"].get("phase") == "before"]
    assert all(e["data"]["op"] == "pause_vm" for e in befores)
    with broker_conn() as c:
        wait_depth(c, topo.host_queue.name, 0)
    ok = env.publish("pause_vm", {"uuid": str(uuid.uuid4())})  # still serving
    assert tap.wait_terminal(ok)["data"]["error"]["code"] == "no_domain"
