"""Traces (docs/operations.md, Tracing): a worker in this process on test:///default with the
OpenTelemetry SDK's in-memory exporter; W3C trace context on the messages and the events."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kombu import Queue
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.support import BROKER, ThreadWorker, broker_conn, drain_queue, small_vm, wait_for
from worker import logs, tracing
from worker.cli import main
from worker.peers import Peers
from worker.topology import Topology


@pytest.fixture(autouse=True)
def _worker_logs_to_stderr() -> None:
    """The worker runs in this process: its logs must not land in the CLI's stdout."""
    logs.configure("warning", json=False)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced_worker(env: Any, exporter: InMemorySpanExporter) -> Iterator[ThreadWorker]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    w = ThreadWorker(env.settings(), tracer_provider=provider).start()
    try:
        yield w
    finally:
        w.stop()
        provider.shutdown()


def context() -> tuple[str, str, str]:
    """(traceparent, trace id, parent span id): a sampled context, as a client would send."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def hook(root: Path, point: str, name: str, rc: int = 0) -> None:
    d = root / point
    d.mkdir(mode=0o755, exist_ok=True)
    p = d / name
    p.write_text(f"#!/bin/sh\necho {name} >&2\nexit {rc}\n")
    p.chmod(0o755)


def hexid(n: int, width: int) -> str:
    return format(n, f"0{width}x")


def spans_of(exporter: InMemorySpanExporter, rid: str) -> list[ReadableSpan]:
    """The finished spans of request `rid`, once its `<op> process` span has ended."""

    def done() -> list[ReadableSpan] | None:
        spans = [
            s
            for s in exporter.get_finished_spans()
            if (s.attributes or {}).get("vmworker.request_id") == rid
        ]
        return spans if any(s.kind == SpanKind.CONSUMER for s in spans) else None

    return wait_for(done, 10, f"the process span of {rid}")


def parent_tp(ev: dict[str, Any]) -> tuple[str, str]:
    """(trace id, span id) of an event's `traceparent`."""
    _, trace_id, span_id, _ = ev["traceparent"].split("-")
    return trace_id, span_id


def test_a_start_vm_is_one_span_tree_under_the_senders_context(
    env, tap, traced_worker, exporter, test_domains, hooks_root
):
    hook(hooks_root, "before_vm_start", "50_note")
    hook(hooks_root, "after_vm_start", "10_after")
    vm = small_vm("trace")
    test_domains.append(vm["uuid"])
    tp, trace_id, parent_id = context()
    rid = env.publish(
        "start_vm", vm, headers={"traceparent": tp, "tracestate": "ctl=1"}, correlation_id="c-1"
    )
    assert tap.wait_terminal(rid)["data"]["phase"] == "after"
    spans = spans_of(exporter, rid)

    (root,) = [s for s in spans if s.kind == SpanKind.CONSUMER]
    assert root.name == "start_vm process"
    assert hexid(root.context.trace_id, 32) == trace_id
    assert root.parent is not None and hexid(root.parent.span_id, 16) == parent_id
    assert root.status.status_code != StatusCode.ERROR
    attrs = dict(root.attributes or {})
    assert attrs["messaging.system"] == "rabbitmq"
    assert attrs["messaging.operation"] == "process"
    assert attrs["messaging.destination.name"] == f"{env.prefix}.ops"
    assert attrs["messaging.message.id"] == rid
    assert attrs["messaging.message.conversation_id"] == "c-1"
    assert attrs["vmworker.phase"] == "after" and attrs["vmworker.state"] == "running"

    children = [s for s in spans if s is not root]
    for s in [root, *children]:  # every span names host, op, VM and request
        a = s.attributes or {}
        assert a["vmworker.host"] == env.host, s.name
        assert a["vmworker.op"] == "start_vm", s.name
        assert a["vmworker.vm.uuid"] == vm["uuid"], s.name
        assert a["vmworker.request_id"] == rid, s.name
        assert hexid(s.context.trace_id, 32) == trace_id, s.name
    for s in children:
        assert s.parent is not None and s.parent.span_id == root.context.span_id, s.name
        assert root.start_time <= s.start_time <= s.end_time <= root.end_time, s.name
    names = sorted(s.name for s in children)
    assert "hook before_vm_start 50_note" in names
    assert "hook after_vm_start 10_after" in names
    assert {"libvirt connect", "libvirt done", "libvirt start_vm"} <= set(names)
    (h,) = [s for s in children if s.name == "hook before_vm_start 50_note"]
    for k, v in {
        "vmworker.hook.point": "before_vm_start",
        "vmworker.hook.script": "50_note",
        "vmworker.hook.kind": "script",
        "vmworker.hook.rc": 0,
        "vmworker.hook.timed_out": False,
    }.items():
        assert (h.attributes or {})[k] == v, k
    (call,) = [s for s in children if s.name == "libvirt start_vm"]
    assert (call.attributes or {})["vmworker.libvirt.attempts"] == 1

    # every event of the request carries the trace: the span that made it, the tracestate on
    publishes = {s.context.span_id: s for s in children if s.kind == SpanKind.PRODUCER}
    evs = tap.of(rid)
    assert [e["data"]["phase"] for e in evs] == ["before", "after"]
    for ev in evs:
        ev_trace, ev_span = parent_tp(ev)
        assert ev_trace == trace_id
        made_by = publishes[int(ev_span, 16)]
        assert made_by.name == f"{env.prefix}.events publish"
        assert (made_by.attributes or {})["messaging.message.id"] == ev["id"]
        assert ev["tracestate"] == "ctl=1"


def test_a_failed_operation_has_error_status_with_its_code(
    env, tap, traced_worker, exporter, test_domains, hooks_root
):
    hook(hooks_root, "before_vm_start", "10_refuse", rc=1)
    vm = small_vm("tracefail")
    test_domains.append(vm["uuid"])
    tp, trace_id, _ = context()
    rid = env.publish("start_vm", vm, headers={"traceparent": tp})
    ev = tap.wait_terminal(rid)
    assert ev["data"]["error"]["code"] == "hook_failed"
    assert parent_tp(ev)[0] == trace_id and "tracestate" not in ev
    spans = spans_of(exporter, rid)
    (root,) = [s for s in spans if s.kind == SpanKind.CONSUMER]
    assert root.status.status_code == StatusCode.ERROR
    assert (root.status.description or "").startswith("hook_failed")
    assert (root.attributes or {})["error.type"] == "hook_failed"
    (h,) = [s for s in spans if s.name == "hook before_vm_start 10_refuse"]
    assert h.status.status_code == StatusCode.ERROR
    assert (h.attributes or {})["vmworker.hook.rc"] == 1
    assert not [s for s in spans if s.name == "libvirt start_vm"]  # libvirt was never asked

    # a VM that is not there: the libvirt step's span fails with libvirt's code
    rid = env.publish("pause_vm", {"uuid": small_vm()["uuid"]}, headers={"traceparent": tp})
    code = tap.wait_terminal(rid)["data"]["error"]["code"]
    spans = spans_of(exporter, rid)
    (root,) = [s for s in spans if s.kind == SpanKind.CONSUMER]
    assert (root.attributes or {})["error.type"] == code
    [failed] = [s for s in spans if s.status.status_code == StatusCode.ERROR and s is not root]
    assert failed.name.startswith("libvirt ") and (failed.attributes or {})["error.type"] == code


def test_a_replay_starts_a_trace_linked_to_the_original(
    env, tap, traced_worker, exporter, test_domains
):
    vm = small_vm("tracereplay")
    test_domains.append(vm["uuid"])
    tp, trace_id, parent_id = context()
    rid = env.publish("define_vm", vm, headers={"traceparent": tp})
    assert tap.wait_terminal(rid)["data"]["phase"] == "after"

    replay = ["replay", "--request-id", rid, "--as-new", "--wait", "10", "--json"]
    res = CliRunner().invoke(
        main, [*replay, "--broker", BROKER, "--prefix", env.prefix, "--idle", "0.3"]
    )
    assert res.exit_code == 0, res.output
    [row] = json.loads(res.stdout)["replays"]
    new = row["new_request_id"]
    (root,) = [s for s in spans_of(exporter, new) if s.kind == SpanKind.CONSUMER]
    assert root.parent is None and hexid(root.context.trace_id, 32) != trace_id
    [link] = root.links
    assert hexid(link.context.trace_id, 32) == trace_id
    assert hexid(link.context.span_id, 16) == parent_id
    assert (root.attributes or {})["vmworker.replay_of"] == rid
    # its events carry its own trace
    evs = tap.of(new)
    assert evs and {parent_tp(e)[0] for e in evs} == {hexid(root.context.trace_id, 32)}


def test_with_tracing_off_events_carry_the_incoming_context_as_it_came(
    env, tap, start_worker, test_domains
):
    w = start_worker()
    assert not w.service.tracing.enabled
    vm = small_vm("traceoff")
    test_domains.append(vm["uuid"])
    tp, _, _ = context()
    headers = {"traceparent": tp, "tracestate": "ctl=7,other=x"}
    rid = env.publish("define_vm", vm, headers=headers)
    tap.wait_terminal(rid)
    evs = tap.of(rid)
    assert [e["data"]["phase"] for e in evs] == ["before", "after"]
    for ev in evs:
        assert (ev["traceparent"], ev["tracestate"]) == (tp, headers["tracestate"])

    # the same request again: the duplicate carries the context of the message that asked
    tp2, _, _ = context()
    env.publish("define_vm", vm, request_id=rid, headers={"traceparent": tp2})
    dup = tap.wait(lambda: tap.terminal(rid, include_duplicates=True)[1:])[0]
    assert dup["data"]["duplicate"] is True
    assert dup["traceparent"] == tp2 and "tracestate" not in dup

    # a refused message too; a malformed traceparent is dropped, never copied
    bad = env.publish("start_vm", body={"op": "start_vm"}, headers={"traceparent": tp})
    assert tap.wait_terminal(bad)["traceparent"] == tp
    junk = env.publish("define_vm", small_vm(), headers={"traceparent": "00-xyz-01"})
    assert "traceparent" not in tap.wait_terminal(junk)


@pytest.mark.parametrize("on", [True, False], ids=["tracing-on", "tracing-off"])
def test_messages_to_another_host_carry_the_requests_context(env, on):
    """A migration's prepare/finish messages (worker/peers.py) continue the request's trace."""
    other = f"{env.host}-peer"
    env.other_hosts.append(other)
    with broker_conn() as conn:
        topo = Topology(env.prefix, other)
        topo.declare_shared(conn)
        queue: Queue = topo.host_queue
        queue.bind(conn.default_channel).declare()
    tp, trace_id, _ = context()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tr = tracing.Tracing(env.host, provider if on else None).receive(
        {"traceparent": tp, "tracestate": "ctl=2"},
        op="migrate_vm",
        request_id="r-1",
        correlation_id=None,
        vm_uuid=None,
        destination=f"{env.prefix}.ops",
    )

    def send() -> None:  # as the pool thread running the migration does
        tracing.enter(tr)
        try:
            body = {"version": 1, "op": "finish_incoming", "vm": {"uuid": small_vm()["uuid"]}}
            Peers(env.settings()).send(other, body, request_id="r-1.finish", correlation_id="r-1")
        finally:
            tracing.leave(tr)

    t = threading.Thread(target=send)
    t.start()
    t.join(20)
    with broker_conn() as conn:
        [msg] = drain_queue(conn, queue.name)
    headers = msg.headers
    assert headers["tracestate"] == "ctl=2"
    if on:
        assert tr.span is not None
        assert headers["traceparent"] == tr.event_headers()["traceparent"]
        assert headers["traceparent"].split("-")[1] == trace_id
    else:
        assert headers["traceparent"] == tp
    assert tracing.outgoing() == {}  # outside a request: nothing
