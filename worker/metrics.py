"""Prometheus metrics of one worker, served on `settings.metrics_address`:`metrics_port` (0 = off).

Each `Metrics` has its own registry (several workers can live in one process: the tests, the
demo). The service records an operation from its terminal event, so what is counted is exactly
what was published.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from typing import Any

import libvirt
import structlog
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)

from worker.heartbeat import version_text, worker_version

log = structlog.get_logger()

# a `_created` series beside every counter and histogram doubles the series for nothing
disable_created_metrics()

_OP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
_HOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, host: str, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.host = host
        self.operations = Counter(
            "vmworker_operations",
            "Operations finished, by op and outcome (after|fail)",
            ["op", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "vmworker_operation_duration_seconds",
            "Time from start to terminal event",
            ["op", "outcome"],
            buckets=_OP_BUCKETS,
            registry=r,
        )
        self.hook_duration = Histogram(
            "vmworker_hook_duration_seconds",
            "Time one hook script or in-process hook ran",
            ["point"],
            buckets=_HOOK_BUCKETS,
            registry=r,
        )
        self.hook_failures = Counter(
            "vmworker_hook_failures",
            "Hooks that exited non-zero, were refused or timed out",
            ["point", "hook"],
            registry=r,
        )
        self.retries = Counter(
            "vmworker_retries", "libvirt calls repeated after a transient error", ["op"], registry=r
        )
        self.redeliveries = Counter(
            "vmworker_redeliveries", "Operation messages delivered again by the broker", registry=r
        )
        self.duplicates = Counter(
            "vmworker_duplicates",
            "Messages of finished requests: recorded outcome re-sent",
            registry=r,
        )
        self.rejected = Counter(
            "vmworker_rejected",
            "Messages refused before running (invalid, unauthorized)",
            ["code"],
            registry=r,
        )
        self.dead_letters = Counter(
            "vmworker_dead_letters", "Messages sent to the dead-letter queue", registry=r
        )
        self.state_events = Counter(
            "vmworker_state_events",
            "Lifecycle events libvirt reported; published=false: caused by our own operation",
            ["state", "published"],
            registry=r,
        )
        self.heartbeats = Counter("vmworker_heartbeats", "Heartbeat events queued", registry=r)
        self.outbox = Gauge(
            "vmworker_outbox_size", "Events not yet confirmed by the broker", registry=r
        )
        self.inflight = Gauge(
            "vmworker_operations_in_flight", "Operations received and not yet finished", registry=r
        )
        self.build = Info(
            "vmworker_build", "The worker's version, its Python and libvirt library", registry=r
        )
        self.build.info(
            {
                "version": worker_version(),
                "python": platform.python_version(),
                "libvirt": version_text(libvirt.getVersion()),
            }
        )
        self.broker_connected = Gauge(
            "vmworker_broker_connected",
            "1 while the worker is connected to the broker and consuming its queue",
            registry=r,
        )
        self.queue_depth = Gauge(
            "vmworker_queue_depth",
            "Messages ready in the host queue, as the broker counted them at the last heartbeat",
            registry=r,
        )
        self.queue_depth.set(float("nan"))
        self.last_heartbeat = Gauge(
            "vmworker_last_heartbeat_timestamp_seconds",
            "Unix time the last host.online or host.heartbeat event was queued",
            registry=r,
        )
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)  # process_*, python_*: the same ones the default registry has
        self._server: Any = None

    # -- recording -----------------------------------------------------------------------
    def operation_finished(self, data: dict[str, Any]) -> None:
        """Count one terminal event (`data` of an `after` or `fail` event)."""
        op = str(data.get("op") or "unknown")
        outcome = str(data.get("phase") or "unknown")
        self.operations.labels(op, outcome).inc()
        self.duration.labels(op, outcome).observe(float(data.get("duration_ms") or 0) / 1000.0)
        attempts = int(data.get("attempt") or 0)
        if attempts > 1:
            self.retries.labels(op).inc(attempts - 1)
        for h in data.get("hooks") or []:
            point = str(h.get("point") or "unknown")
            self.hook_duration.labels(point).observe(float(h.get("duration_ms") or 0) / 1000.0)
            if h.get("rc") != 0:
                self.hook_failures.labels(point, str(h.get("name"))).inc()

    def state_event(self, state: str, published: bool) -> None:
        self.state_events.labels(state, "true" if published else "false").inc()

    def inventory_queued(self, data: dict[str, Any]) -> None:
        """A heartbeat (or host.online) was queued with this inventory."""
        self.last_heartbeat.set(time.time())
        depth = data.get("queue_depth")
        self.queue_depth.set(float("nan") if depth is None else float(depth))

    def bind(
        self,
        *,
        outbox: Callable[[], int],
        inflight: Callable[[], int],
        connected: Callable[[], bool] | None = None,
    ) -> None:
        """Gauges read when scraped."""
        self.outbox.set_function(_safe(outbox))
        self.inflight.set_function(_safe(inflight))
        if connected is not None:
            self.broker_connected.set_function(_safe(connected))

    # -- serving -------------------------------------------------------------------------
    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        try:
            server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:  # metrics are not worth refusing to run operations for
            log.error("metrics.unavailable", port=port, addr=addr, error=str(exc))
            return
        self._server = server
        log.info("metrics.serving", port=port, addr=addr)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _safe(fn: Callable[[], int | bool]) -> Callable[[], float]:
    def read() -> float:
        try:
            return float(fn())
        except Exception:  # the journal may be closed while a scrape runs
            return float("nan")

    return read
