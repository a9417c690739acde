"""Tracing's settings, the W3C headers it accepts, and its OTLP export (worker/tracing.py)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from worker import events, tracing
from worker.config import Settings, TracingSettings, load_settings

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_SERVICE_NAME",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        monkeypatch.delenv(k, raising=False)


def test_tracing_is_off_by_default_and_sets_nothing_up() -> None:
    s = Settings()
    assert s.tracing == TracingSettings()
    assert not s.tracing.enabled and s.tracing.service_name == "vmworker"
    t = tracing.Tracing.from_settings(s)
    assert not t.enabled and t.provider is None
    tr = t.receive(
        {"traceparent": TP, "tracestate": "a=1"},
        op="start_vm",
        request_id="r",
        correlation_id=None,
        vm_uuid=None,
        destination="vm.ops",
    )
    assert tr.span is None and tr.child("x") is None and tr.publish_span("e", "k") is None
    assert tr.event_headers() == {"traceparent": TP, "tracestate": "a=1"}


def test_tracing_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMWORKER_TRACING__ENABLED", "true")
    monkeypatch.setenv("VMWORKER_TRACING__OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("VMWORKER_TRACING__PROTOCOL", "grpc")
    t = Settings().tracing
    assert (t.enabled, t.otlp_endpoint, t.protocol) == (True, "http://collector:4317", "grpc")


def test_tracing_settings_from_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "vmworker.toml"
    cfg.write_text(
        '[tracing]\nenabled = true\notlp_endpoint = "http://c:4318"\n'
        'protocol = "http/protobuf"\nservice_name = "vmworker-lab"\n'
    )
    t = load_settings(cfg).tracing
    assert t.enabled and t.otlp_endpoint == "http://c:4318" and t.protocol == "http/protobuf"
    assert t.service_name == "vmworker-lab"


def test_an_unknown_protocol_or_key_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(tracing={"enabled": True, "protocol": "thrift"})
    with pytest.raises(ValidationError):
        Settings(tracing={"enabeld": True})


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"traceparent": TP}, {"traceparent": TP}),
        (
            {"traceparent": TP.encode(), "tracestate": b"a=1"},
            {"traceparent": TP, "tracestate": "a=1"},
        ),
        ({"traceparent": TP, "tracestate": "x" * 513}, {"traceparent": TP}),
        ({"traceparent": TP.upper()}, {}),
        ({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}, {}),
        ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01"}, {}),
        ({"traceparent": "ff" + TP[2:]}, {}),
        ({"traceparent": 5, "tracestate": "a=1"}, {}),
        ({"tracestate": "a=1"}, {}),
        (None, {}),
    ],
)
def test_only_a_well_formed_traceparent_is_taken(headers: Any, expected: dict[str, str]) -> None:
    assert tracing.incoming(headers) == expected


def test_events_carry_the_trace_as_extension_attributes() -> None:
    _, ev = events.op_event(
        "h1",
        "start_vm",
        "before",
        request_id="r",
        correlation_id=None,
        vm_uuid=None,
        vm_name=None,
        trace={"traceparent": TP, "tracestate": "a=1"},
    )
    assert ev["traceparent"] == TP and ev["tracestate"] == "a=1"
    dup = events.as_duplicate(ev, redelivered=False, trace={"traceparent": TP[:-1] + "0"})
    assert dup["traceparent"] == TP[:-1] + "0" and "tracestate" not in dup
    assert "traceparent" not in events.as_duplicate(ev, redelivered=False)


def test_the_exporter_follows_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    exp = tracing.make_exporter(TracingSettings(enabled=True, otlp_endpoint="http://c:4318"))
    assert isinstance(exp, Http) and exp._endpoint == "http://c:4318/v1/traces"
    exp = tracing.make_exporter(TracingSettings(enabled=True, otlp_endpoint="http://c:1/x"))
    assert exp._endpoint == "http://c:1/x"  # a path given is kept
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert tracing.protocol_of(TracingSettings(enabled=True)) == "grpc"
    assert tracing.protocol_of(TracingSettings(enabled=True, protocol="http/protobuf")) == (
        "http/protobuf"
    )


def test_a_missing_exporter_package_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(tracing.TracingUnavailable, match=r"vmworker\[otlp\]"):
        tracing.make_exporter(TracingSettings(enabled=True, protocol="grpc"))


class _Collector(BaseHTTPRequestHandler):
    got: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """An OTLP/HTTP receiver on a free local port: (base URL, what it received)."""
    _Collector.got = []
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", _Collector.got
    finally:
        server.shutdown()
        server.server_close()


def test_spans_are_exported_over_otlp_http_when_enabled(collector: Any) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    url, got = collector
    s = Settings(host="h-otlp", tracing={"enabled": True, "otlp_endpoint": url})
    t = tracing.Tracing.from_settings(s)
    assert t.enabled and t.owned
    tr = t.receive(
        {"traceparent": TP},
        op="start_vm",
        request_id="r-9",
        correlation_id=None,
        vm_uuid=None,
        destination="vm.ops",
    )
    assert tr.span is not None
    tr.span.end()
    t.shutdown()  # flushes the batch
    [(path, body)] = got
    assert path == "/v1/traces"
    req = ExportTraceServiceRequest.FromString(body)
    [rs] = req.resource_spans
    resource = {a.key: a.value.string_value for a in rs.resource.attributes}
    assert resource["service.name"] == "vmworker" and resource["host.name"] == "h-otlp"
    [span] = [sp for ss in rs.scope_spans for sp in ss.spans]
    assert span.name == "start_vm process"
    assert span.trace_id.hex() == TP.split("-")[1] and span.parent_span_id.hex() == TP.split("-")[2]


def test_a_retried_libvirt_step_is_one_span_with_an_event_per_retry() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from handlers.errors import OpError
    from worker.runner import Runner

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    fast = {"attempts": 3, "initial_s": 0.001, "max_backoff_s": 0.001}
    runner = Runner(Settings(retry={"default": fast}), lv=None, hooks=None)  # type: ignore[arg-type]
    tr = tracing.Tracing("h1", provider).receive(
        {"traceparent": TP},
        op="start_vm",
        request_id="r-5",
        correlation_id=None,
        vm_uuid="u",
        destination="vm.ops",
    )
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise OpError("timeout", "libvirtd busy", "libvirt", transient=True)

    def broken() -> None:
        raise OpError("no_domain", "gone", "libvirt")

    tracing.enter(tr)
    try:
        assert runner._libvirt("start_vm", flaky, step="start_vm") == 3
        with pytest.raises(OpError):
            runner._libvirt("start_vm", broken, step="done")
    finally:
        tracing.leave(tr)
    ok, failed = exporter.get_finished_spans()
    assert ok.name == "libvirt start_vm" and ok.status.status_code != StatusCode.ERROR
    assert (ok.attributes or {})["vmworker.libvirt.attempts"] == 3
    retries = [e for e in ok.events if e.name == "retry"]
    assert [(e.attributes or {})["vmworker.retry.attempt"] for e in retries] == [1, 2]
    assert all((e.attributes or {})["error.type"] == "timeout" for e in retries)
    assert (ok.attributes or {})["vmworker.request_id"] == "r-5"
    assert failed.name == "libvirt done" and failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "no_domain"
