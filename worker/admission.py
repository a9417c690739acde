"""Admission and the journal: what becomes of a delivery (refused, a duplicate, or a job to run)
and every record of a request, from its receipt to its terminal event. Knows neither the broker
nor libvirt: a delivery in, a `Settle` (ack once this outbox event is confirmed) or a `Job` out.

A request is looked up in the journal once, here, when it arrives; a job's `before` and
terminal records are written here too, so one object holds a request's whole journal story.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from kombu.message import Message

from handlers.operations import OPERATIONS
from worker import events, logs
from worker.config import Settings
from worker.errors import OpError
from worker.jobs import Delivery, Job, Settle, Stats, reason
from worker.journal import FINISHED, STARTED, Journal
from worker.messages import parse_operation, peek
from worker.metrics import Metrics
from worker.runner import Outcome
from worker.tracing import Trace, Tracing

log = structlog.get_logger()
T = TypeVar("T")


class Admission:
    """`admit` runs on the connection thread; `start`/`finish` on the pool's (the journal is
    thread-safe). `in_flight` finds a job queued or running here by its request id."""

    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        *,
        stats: Stats,
        metrics: Metrics,
        in_flight: Callable[[str], Job | None],
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.host = settings.host
        self.tracing = tracing or Tracing(settings.host)
        self.ops_exchange = f"{settings.prefix}.ops"
        self.events_exchange = f"{settings.prefix}.events"
        self.journal = journal
        self.stats = stats
        self.metrics = metrics
        self.in_flight = in_flight
        self._next_prune = 0.0

    # -- a delivery comes in -------------------------------------------------------------
    def admit(self, message: Message, generation: int) -> Job | Settle | None:
        """A new job; or a Settle for a refused message or a finished request (its `fail` or
        recorded terminal event is in the outbox); or None: a copy of a job already here,
        acked with it."""
        t0 = time.time_ns() if self.tracing.enabled else None
        delivery = Delivery(message, generation)
        self.stats.received += 1
        if delivery.redelivered:
            self.metrics.redeliveries.inc()
        props = message.properties
        request_id = props.get("message_id")
        correlation_id = props.get("correlation_id")
        body: bytes = message.body if isinstance(message.body, bytes) else message.body.encode()
        headers = message.headers or {}
        try:
            self._authorize(props)  # first: nothing from a stranger is parsed or journaled
            if not request_id:
                raise OpError(
                    "no_message_id",
                    "message has no message_id property (the request id)",
                    "validation",
                )
            op = _parse(body, self.settings.max_body_bytes)
            deadline = _deadline(headers)
        except OpError as err:
            return self.reject(delivery, body, request_id, correlation_id, err, t0)
        req = self.journal.receive(request_id, op.op, str(op.vm.uuid))
        if req.state == FINISHED:  # the journal first: a job may be done but not yet collected
            trace = self._trace(headers, op.op, request_id, correlation_id, str(op.vm.uuid), t0)
            return self._duplicate(delivery, req, trace)
        job = self.in_flight(request_id)
        if job is not None:  # a redelivery (or a second copy) of something we are on
            log.info(
                "op.in_progress",  # acked with the run under way
                request_id=request_id,
                op=op.op,
                vm=str(op.vm.uuid),
            )
            job.deliveries.append(delivery)
            return None
        if _delivery_count(headers) >= self.settings.delivery_limit:
            # the broker's last delivery: if it kills us, it is dead-lettered, never redelivered
            self.journal.mark_final_delivery(request_id)
        job = Job(request_id, op, correlation_id, [delivery], recovered=req.state == STARTED)
        job.control = OPERATIONS[op.op].control
        job.attempt = req.runs + 1
        job.replay_of = headers.get("x-replay-of")
        job.deadline = deadline
        job.trace = self._trace(headers, op.op, request_id, correlation_id, job.vm, t0)
        if job.recovered:
            log.info(
                "op.recovering",
                request_id=request_id,
                op=op.op,
                vm=str(op.vm.uuid),
            )
        return job

    def undecodable(self, message: Message, generation: int, exc: Exception) -> Settle:
        """kombu could not undo the message's `compression` header: bad input like any other."""
        props = message.properties
        err = OpError("undecodable", f"body cannot be decompressed: {exc!r}"[:500], "validation")
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        delivery = Delivery(message, generation)
        return self.reject(
            delivery, body, props.get("message_id"), props.get("correlation_id"), err
        )

    def _trace(
        self,
        headers: Mapping[str, Any],
        op: str,
        request_id: str | None,
        correlation_id: str | None,
        vm_uuid: str | None,
        t0: int | None,
    ) -> Trace:
        return self.tracing.receive(
            headers,
            op=op,
            request_id=request_id,
            correlation_id=correlation_id,
            vm_uuid=vm_uuid,
            destination=self.ops_exchange,
            start_time=t0,
        )

    def _authorize(self, props: dict[str, Any]) -> None:
        allowed = self.settings.allowed_publishers
        if allowed and props.get("user_id") not in allowed:
            raise OpError(
                "unauthorized",
                f"publisher {props.get('user_id')!r} is not allowed"
                " to order operations on this host",
                "unauthorized",
            )

    def reject(
        self,
        d: Delivery,
        body: bytes,
        request_id: str | None,
        correlation_id: str | None,
        err: OpError,
        t0: int | None = None,
    ) -> Settle:
        seen = _peek(body)
        log.warning("message.rejected", request_id=request_id, **logs.error_fields(err))
        headers = d.message.headers or {}
        op, vm_uuid = seen.get("op") or "invalid", seen.get("vm_uuid")
        trace = self._trace(headers, op, request_id, correlation_id, vm_uuid, t0)
        rk, ev = events.op_event(
            self.host,
            op,
            "fail",
            request_id=request_id,
            correlation_id=correlation_id,
            vm_uuid=vm_uuid,
            vm_name=seen.get("vm_name"),
            trace=trace.event_headers(),
            redelivered=d.redelivered,
            attempt=0,
            duration_ms=0,
            state="unknown",
            hooks=[],
            error=err.to_event(),
            **_replay_fields(headers),
        )
        seq = self.journal.enqueue(rk, ev)
        if trace.span is not None:
            trace.failed(None, err.code, err.message)
            trace.span.end()
        self.metrics.rejected.labels(err.code).inc()
        self.stats.count("fail")
        return Settle(seq, [d], reason(err))

    def _duplicate(self, d: Delivery, req: Any, trace: Trace) -> Settle:
        recorded = self.journal.terminal_of(req)
        assert recorded is not None
        rk, ev = recorded
        dup = events.as_duplicate(ev, redelivered=d.redelivered, trace=trace.event_headers())
        seq = self.journal.enqueue(rk, dup)
        if trace.span is not None:
            trace.span.set_attribute("vmworker.duplicate", True)
            trace.span.end()
        err = ev["data"].get("error")
        dead = None
        if ev["data"].get("phase") == "fail" and err and err.get("source") != "expired":
            dead = reason(OpError(err["code"], err["message"], err["source"]))
        self.stats.duplicates += 1
        self.metrics.duplicates.inc()
        log.info(
            "op.duplicate",  # its recorded terminal event is published again
            request_id=req.request_id,
            outcome=req.outcome,
        )
        return Settle(seq, [d], dead)

    # -- a job's records (pool threads) ----------------------------------------------------
    def expired(self, job: Job) -> Outcome | None:
        """The `fail` outcome of a job whose x-deadline passed before it could start."""
        if not job.deadline or job.recovered or job.deadline >= datetime.now(UTC):
            return None
        err = OpError(
            "expired",
            f"deadline {job.deadline.isoformat()} passed before the operation could start",
            "expired",
        )
        return Outcome(False, "unknown", 0.0, 0, error=err)

    def start(self, job: Job) -> None:
        """The `started` record and the `before` event, on disk before libvirt is called."""
        self._journaled(
            job,
            "before",
            lambda event: self.journal.start(job.request_id, event),
            recovered=job.recovered,
        )

    def finish(
        self, job: Job, outcome: Outcome, *, dead_letter: bool
    ) -> tuple[Settle, dict[str, Any]]:
        """Record and queue the terminal event; returns when to ack, and the event's data."""

        def record(event: tuple[str, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
            seq = self.journal.finish(job.request_id, outcome.phase, event, outcome.attempts)
            return seq, event[1]["data"]

        seq, data = self._journaled(
            job, outcome.phase, record, recovered=job.recovered, **outcome.event_fields()
        )
        logs.operation_finished(
            log,
            outcome.error,
            request_id=job.request_id,
            op=job.op.op,
            vm=job.vm,
            phase=outcome.phase,
            state=outcome.state,
            attempts=outcome.attempts,
            duration_ms=round(outcome.duration_ms, 1),
        )
        dead = reason(outcome.error) if (dead_letter and outcome.error) else None
        return Settle(seq, job.deliveries, dead), data

    def _journaled(
        self,
        job: Job,
        phase: str,
        write: Callable[[tuple[str, dict[str, Any]]], T],
        **fields: Any,
    ) -> T:
        """`write` one event of `job` (into the journal); with tracing on, under a publish
        span whose context the event carries."""
        tr = job.trace
        if tr.span is None:
            return write(self._event(job, phase, tr.headers, **fields))
        rk = events.routing_key(self.host, job.op.op, phase)
        span = tr.publish_span(self.events_exchange, rk)
        event = self._event(job, phase, tr.event_headers(span), **fields)
        if span is None:
            return write(event)
        span.set_attribute("messaging.message.id", event[1]["id"])
        try:
            return write(event)
        finally:
            span.end()

    def _event(
        self, job: Job, phase: str, trace: Mapping[str, str], **fields: Any
    ) -> tuple[str, dict[str, Any]]:
        return events.op_event(
            self.host,
            job.op.op,
            phase,
            request_id=job.request_id,
            correlation_id=job.correlation_id,
            vm_uuid=job.vm,
            vm_name=job.op.vm_name,
            trace=trace,
            redelivered=any(d.redelivered for d in job.deliveries),
            **({"replay_of": job.replay_of} if job.replay_of else {}),
            **job.op.event_data(),
            **fields,
        )

    def progress(self, job: Job, data: dict[str, Any]) -> None:
        """A non-terminal event of a running job (`<host>.<op>.progress`), through the outbox."""
        self._journaled(job, "progress", lambda event: self.journal.enqueue(*event), **data)

    # -- the journal at start-up and every hour ------------------------------------------
    def reconcile(self) -> None:
        """What the journal left unfinished (as nova-compute's _init_instance does at start).

        A request that started but did not finish is normally redelivered (its message was
        never acked) and reconciled then, against libvirt. One whose run began on the broker's
        last delivery (x-delivery-count reached delivery_limit) will not be: the worker died
        running it, so the broker has dead-lettered it. Its outcome is unknown; it gets its
        terminal event now, a `fail` with code `delivery_limit`, so that every request that
        had a `before` has a terminal event."""
        self.prune()
        for req in self.journal.unfinished():
            if req.final_delivery:
                err = OpError(
                    "delivery_limit",
                    f"the worker died {req.deliveries} time(s) running this request; the broker"
                    " dead-lettered it after its last delivery; its effect is unknown",
                    "internal",
                )
                rk, ev = events.op_event(
                    self.host,
                    req.op,
                    "fail",
                    request_id=req.request_id,
                    correlation_id=None,
                    vm_uuid=req.vm_uuid,
                    vm_name=None,
                    redelivered=True,
                    recovered=True,
                    attempt=req.runs,
                    duration_ms=0,
                    state="unknown",
                    hooks=[],
                    error=err.to_event(),
                )
                self.journal.finish(req.request_id, "fail", (rk, ev))
                self.stats.count("fail")
                log.error(
                    "op.delivery_limit",
                    request_id=req.request_id,
                    op=req.op,
                    vm=req.vm_uuid,
                    deliveries=req.deliveries,
                    **logs.error_fields(err),
                )
            else:
                log.warning(
                    "journal.unfinished",
                    request_id=req.request_id,
                    op=req.op,
                    vm=req.vm_uuid,
                    state=req.state,
                    runs=req.runs,
                )

    def prune(self, *, when_due: bool = False) -> None:
        """Forget finished requests past the retention; with `when_due`, at most once an hour."""
        if when_due and time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + 3600.0
        try:
            n = self.journal.prune(self.settings.journal_retention_days * 86400.0)
        except Exception:
            log.exception("journal.prune_failed")
            return
        if n:
            log.info(
                "journal.pruned", requests=n, retention_days=self.settings.journal_retention_days
            )


def _replay_fields(headers: dict[str, Any]) -> dict[str, Any]:
    replay_of = headers.get("x-replay-of")
    return {"replay_of": str(replay_of)} if replay_of else {}


def _parse(body: bytes, max_bytes: int) -> Any:
    """parse_operation, with anything it did not foresee (a body nested deeper than the JSON
    parser's recursion limit, ...) as a validation error too."""
    try:
        return parse_operation(body, max_bytes=max_bytes)
    except OpError:
        raise
    except Exception as exc:
        msg = f"body cannot be parsed: {type(exc).__name__}"
        raise OpError("invalid", msg, "validation") from None


def _peek(body: bytes) -> dict[str, Any]:
    try:
        return peek(body)
    except Exception:
        return {}


def _delivery_count(headers: dict[str, Any]) -> int:
    """How many times the broker delivered this message before (quorum queues' header)."""
    raw = headers.get("x-delivery-count")
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else 0


def _deadline(headers: dict[str, Any]) -> datetime | None:
    """The x-deadline header (ISO 8601 or an AMQP timestamp); an unreadable one is refused
    rather than ignored: running an op past the deadline its sender meant is not safe."""
    raw = headers.get("x-deadline")
    if raw is None:
        return None
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    try:
        if not isinstance(raw, str | bytes):
            raise TypeError(type(raw).__name__)
        text = raw.decode() if isinstance(raw, bytes) else raw
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise OpError(
            "bad_deadline",
            f"x-deadline {str(raw)[:100]!r} is not an ISO 8601 timestamp",
            "validation",
        ) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
