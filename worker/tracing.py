"""Distributed tracing: W3C Trace Context in, OpenTelemetry spans out (docs/operations.md,
Tracing).

An operation message may carry the AMQP headers `traceparent` and `tracestate` (W3C Trace
Context). Every event of its request carries them on as the CloudEvents distributed-tracing
extension attributes of the same names: the incoming ones as they came when tracing is off, the
context of the span that made the event when it is on.

With `tracing.enabled`, each request is a span `<op> process` (kind CONSUMER, OpenTelemetry's
messaging conventions), a child of the message's context, and has children: `hook <point>
<name>` per hook run, `libvirt <call>` per libvirt step (its retries are events on it) and
`<events exchange> publish` per event. A replayed message (header `x-replay-of` or
`x-replayed-at`) starts a new trace that links to the original message's context.

Off (the default), no SDK is set up: a request's `Trace` holds the incoming headers only, and
every call site checks `Trace.span` (or `active()`) before doing any tracing work.
"""

from __future__ import annotations

import importlib
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from worker.config import Settings, TracingSettings

HEADERS = ("traceparent", "tracestate")
TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
TRACESTATE_MAX = 512  # characters (W3C: at most 32 list members); a longer one is dropped
REPLAY_HEADERS = ("x-replay-of", "x-replayed-at")
SERVICE_NAME = "vmworker"
_TRACEPARENT = re.compile(TRACEPARENT_PATTERN)
_W3C = TraceContextTextMapPropagator()
_current: ContextVar[Trace | None] = ContextVar("vmworker_trace", default=None)


def incoming(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """The message's W3C trace headers, if its `traceparent` is well formed (else none)."""
    if not headers:
        return {}
    tp = headers.get("traceparent")
    if isinstance(tp, bytes):
        tp = tp.decode("ascii", "replace")
    if (
        not isinstance(tp, str)
        or not _TRACEPARENT.match(tp)
        or tp.startswith("ff")
        or tp[3:35] == "0" * 32
        or tp[36:52] == "0" * 16
    ):
        return {}
    out = {"traceparent": tp}
    ts = headers.get("tracestate")
    if isinstance(ts, bytes):
        ts = ts.decode("ascii", "replace")
    if isinstance(ts, str) and ts and len(ts) <= TRACESTATE_MAX:
        out["tracestate"] = ts
    return out


def _inject(ctx: otel_context.Context) -> dict[str, str]:
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=ctx)
    return carrier


@dataclass(slots=True, eq=False)
class Trace:
    """One request's trace: the headers its message carried and, when tracing is on, its
    `<op> process` span (`tracer` makes the children; `attrs` are set on every one)."""

    headers: dict[str, str]
    span: Span | None = None
    tracer: Tracer | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    tokens: tuple[Any, Any] | None = None  # enter()'s, for leave()

    def event_headers(self, span: Span | None = None) -> dict[str, str]:
        """What an event made under `span` (else the request's span) carries: that span's
        context; the incoming headers when tracing is off (or the span is not sampled)."""
        span = span or self.span
        if span is None or not span.get_span_context().is_valid:
            return self.headers
        return _inject(otel_trace.set_span_in_context(span)) or self.headers

    def child(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        start_time: int | None = None,
        parent: Span | None = None,
    ) -> Span | None:
        """A child span of the request's span (or of `parent`); None when tracing is off."""
        if self.span is None or self.tracer is None:
            return None
        span = self.tracer.start_span(
            name,
            context=otel_trace.set_span_in_context(parent or self.span),
            kind=kind,
            attributes={**self.attrs, **(attributes or {})},
            start_time=start_time,
        )
        return span

    def publish_span(self, exchange: str, routing_key: str) -> Span | None:
        """The span of one event of this request, from its making to the outbox."""
        if self.span is None:
            return None
        return self.child(
            f"{exchange} publish",
            {
                "messaging.system": "rabbitmq",
                "messaging.operation": "publish",
                "messaging.operation.type": "send",
                "messaging.destination.name": exchange,
                "messaging.rabbitmq.destination.routing_key": routing_key,
            },
            kind=SpanKind.PRODUCER,
        )

    def hook_spans(self, point: str, results: Sequence[Any], start_ns: int, end_ns: int) -> None:
        """One span per hook that ran (`results`: ScriptResult), made once they are done:
        from `start_ns`, each as long as it took, one after the other."""
        at = start_ns
        for res in results:
            end = min(at + int(res.duration_ms) * 1_000_000, end_ns)
            span = self.child(
                f"hook {point} {res.name}",
                {
                    "vmworker.hook.point": point,
                    "vmworker.hook.script": res.name,
                    "vmworker.hook.kind": res.kind,
                    "vmworker.hook.rc": res.rc,
                    "vmworker.hook.timed_out": res.timed_out,
                    "vmworker.hook.changed_xml": res.changed_xml,
                },
                start_time=at,
            )
            if span is None:
                return
            if res.refused:
                span.set_attribute("vmworker.hook.refused", res.refused)
            if res.rc != 0:
                why = "timed out" if res.timed_out else res.refused or f"rc={res.rc}"
                span.set_status(Status(StatusCode.ERROR, why))
            span.end(end_time=end)
            at = end

    def failed(self, span: Span | None, code: str, message: str = "") -> None:
        """Mark `span` (else the request's) as failed with a vmworker error code."""
        span = span or self.span
        if span is None:
            return
        span.set_attribute("error.type", code)
        span.set_status(Status(StatusCode.ERROR, f"{code}: {message}"[:500] if message else code))


def active() -> Trace | None:
    """The trace of the request this thread runs, if tracing records it; else None (cheap)."""
    tr = _current.get()
    return tr if tr is not None and tr.span is not None else None


def outgoing() -> dict[str, str]:
    """The trace headers for a message this thread's request sends another host (a
    migration's prepare/finish): the current span's context; the request's own incoming
    headers when tracing is off; none outside a request."""
    tr = _current.get()
    if tr is None:
        return {}
    if tr.span is None:
        return dict(tr.headers)
    return _inject(otel_context.get_current()) or tr.event_headers()


@contextmanager
def current(span: Span) -> Iterator[Span]:
    """`span` as this thread's current span (what `outgoing` injects); a raised exception
    marks it failed; ended on exit."""
    with otel_trace.use_span(span, end_on_exit=True, record_exception=True):
        yield span


class Tracing:
    """A worker's tracing: its own tracer (no global provider is set) or none at all."""

    def __init__(
        self, host: str, provider: TracerProvider | None = None, *, owned: bool = False
    ) -> None:
        self.host = host
        self.provider = provider
        self.owned = owned  # made here from the settings: shut down with the worker
        self.tracer: Tracer | None = None
        if provider is not None:
            self.tracer = provider.get_tracer("vmworker", _version())

    @classmethod
    def from_settings(cls, settings: Settings, provider: TracerProvider | None = None) -> Tracing:
        """Off unless `tracing.enabled` (or a provider is given, as tests do): then an SDK
        provider exporting over OTLP, configured by the settings and the OTEL_* variables."""
        if provider is not None:
            return cls(settings.host, provider)
        if not settings.tracing.enabled:
            return cls(settings.host)
        return cls(settings.host, make_provider(settings.host, settings.tracing), owned=True)

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def receive(
        self,
        headers: Mapping[str, Any] | None,
        *,
        op: str,
        request_id: str | None,
        correlation_id: str | None,
        vm_uuid: str | None,
        destination: str,
        start_time: int | None = None,
    ) -> Trace:
        """A received message's trace; with tracing on, its `<op> process` span, started."""
        tr = Trace(incoming(headers))
        if self.tracer is None:
            return tr
        attrs: dict[str, Any] = {"vmworker.host": self.host, "vmworker.op": op}
        if vm_uuid:
            attrs["vmworker.vm.uuid"] = vm_uuid
        if request_id:
            attrs["vmworker.request_id"] = request_id
        parent = _W3C.extract(tr.headers) if tr.headers else otel_context.Context()
        links: list[Link] = []
        if tr.headers and headers and any(headers.get(h) for h in REPLAY_HEADERS):
            # a replay: a trace of its own, linked to the original message's
            original = otel_trace.get_current_span(parent).get_span_context()
            links.append(Link(original, {"vmworker.link": "replay_of"}))
            parent = otel_context.Context()
        span_attrs = {
            **attrs,
            "messaging.system": "rabbitmq",
            "messaging.operation": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": destination,
            "messaging.rabbitmq.destination.routing_key": self.host,
        }
        if request_id:
            span_attrs["messaging.message.id"] = request_id
        if correlation_id:
            span_attrs["messaging.message.conversation_id"] = correlation_id
        replay_of = headers.get("x-replay-of") if headers else None
        if replay_of:
            span_attrs["vmworker.replay_of"] = str(replay_of)
        tr.span = self.tracer.start_span(
            f"{op} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=span_attrs,
            links=links,
            start_time=start_time,
        )
        tr.tracer = self.tracer
        tr.attrs = attrs
        return tr

    def shutdown(self) -> None:
        """Export what is left: shut the provider down if made here, else flush it."""
        if self.provider is None:
            return
        if self.owned:
            self.provider.shutdown()
        else:
            self.provider.force_flush()


def enter(trace: Trace) -> None:
    """From here on, `trace` is this thread's request (its span the current span)."""
    otoken = None
    if trace.span is not None:
        otoken = otel_context.attach(otel_trace.set_span_in_context(trace.span))
    trace.tokens = (_current.set(trace), otoken)


def leave(trace: Trace) -> None:
    """Undo `enter(trace)`, on the same thread."""
    if trace.tokens is None:
        return
    token, otoken = trace.tokens
    trace.tokens = None
    if otoken is not None:
        otel_context.detach(otoken)
    _current.reset(token)


def now_ns() -> int:
    return time.time_ns()


def _version() -> str:
    from worker.heartbeat import worker_version

    return worker_version()


def make_provider(host: str, cfg: TracingSettings) -> TracerProvider:
    """An SDK provider with a batching OTLP exporter: endpoint and protocol from the settings,
    else the OTEL_EXPORTER_OTLP_* variables; resource `service.name` (OTEL_SERVICE_NAME wins)
    and `host.name`; sampler and batch sizes from OTEL_TRACES_SAMPLER and OTEL_BSP_*."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attrs: dict[str, Any] = {"host.name": host, "service.version": _version()}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = cfg.service_name
    provider = TracerProvider(resource=Resource.create(attrs))
    provider.add_span_processor(BatchSpanProcessor(make_exporter(cfg)))
    return provider


def protocol_of(cfg: TracingSettings) -> str:
    return (
        cfg.protocol
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )


class TracingUnavailable(ValueError):
    """`tracing.enabled`, but its exporter cannot be made."""


def make_exporter(cfg: TracingSettings) -> Any:
    """The OTLP span exporter (package `vmworker[otlp]`); TracingUnavailable if it is not
    installed or the protocol is unknown."""
    protocol = protocol_of(cfg)
    modules = {
        "grpc": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "http/protobuf": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    }
    if protocol not in modules:
        raise TracingUnavailable(f"tracing: unknown OTLP protocol {protocol!r}")
    try:
        exporter_class: Any = importlib.import_module(modules[protocol]).OTLPSpanExporter
    except ImportError as exc:
        raise TracingUnavailable(
            f"tracing.enabled needs the OTLP exporter for {protocol} ({exc.name} is missing):"
            " pip install 'vmworker[otlp]'"
        ) from None
    endpoint = cfg.otlp_endpoint
    if endpoint and protocol == "http/protobuf" and urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"  # the collector's base URL was given
    return exporter_class(endpoint=endpoint) if endpoint else exporter_class()
