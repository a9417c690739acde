"""The client library's parts that need no broker: trace context, typed messages with secrets,
binding keys, events."""

from __future__ import annotations

import json
import sys
import types
import uuid

import pytest

from vmworker.client import Event, OperationFailed, dump_message, trace_headers
from vmworker.handles import topic_re
from worker.messages import OP_MODELS, parse_operation

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_given_trace_context_is_sent_as_given():
    assert trace_headers(TP, "a=1") == {"traceparent": TP, "tracestate": "a=1"}
    assert trace_headers(TP, None) == {"traceparent": TP}


def test_without_opentelemetry_no_trace_headers(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # not importable
    monkeypatch.setitem(sys.modules, "opentelemetry.propagate", None)
    assert trace_headers(None, None) == {}


def test_the_current_opentelemetry_context_is_injected(monkeypatch):
    """The OpenTelemetry API's `propagate.inject` fills the carrier (here a stand-in for the
    API package, whose global propagator writes W3C trace context and baggage)."""
    fake = types.ModuleType("opentelemetry.propagate")

    def inject(carrier: dict[str, str]) -> None:
        carrier.update({"traceparent": TP, "tracestate": "v=2", "baggage": "k=v"})

    fake.inject = inject  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "opentelemetry", types.ModuleType("opentelemetry"))
    monkeypatch.setitem(sys.modules, "opentelemetry.propagate", fake)
    assert trace_headers(None, None) == {"traceparent": TP, "tracestate": "v=2"}


def test_a_typed_message_keeps_its_secret_and_parses_back():
    vm = {"uuid": str(uuid.uuid4())}
    msg = OP_MODELS["set_ticket"].model_validate(
        {"op": "set_ticket", "vm": vm, "params": {"password": "s3cret"}}
    )
    doc = dump_message(msg)
    assert doc["params"]["password"] == "s3cret"
    again = parse_operation(json.dumps(doc).encode(), max_bytes=1 << 20)
    assert again.secrets() == ["s3cret"]


@pytest.mark.parametrize(
    ("key", "routing_key", "match"),
    [
        ("h1.host.*", "h1.host.heartbeat", True),
        ("h1.host.*", "h1.state.paused", False),
        ("h1.#", "h1.start_vm.after", True),
        ("h1.#", "h10.start_vm.after", False),
        ("#", "h1.start_vm.after", True),
        ("h1.migrate_vm.*", "h1.migrate_vm.progress", True),
        ("h1.*.fail", "h1.start_vm.after", False),
    ],
)
def test_binding_keys_match_as_the_broker_routes(key: str, routing_key: str, match: bool):
    assert bool(topic_re(key).fullmatch(routing_key)) is match


def test_a_fail_event_as_an_exception():
    ev = Event(
        {
            "type": "vmworker.pause_vm.fail",
            "requestid": "r1",
            "data": {
                "op": "pause_vm",
                "phase": "fail",
                "host": "h1",
                "duplicate": True,
                "error": {"source": "libvirt", "code": "no_domain", "message": "gone"},
            },
        }
    )
    assert ev.terminal and ev.request_id == "r1" and ev.duplicate
    exc = OperationFailed(ev)
    assert (exc.source, exc.code, exc.error["message"]) == ("libvirt", "no_domain", "gone")
    assert (
        str(exc)
        == "pause_vm on h1 failed (a duplicate: the recorded outcome): libvirt/no_domain: gone"
    )
