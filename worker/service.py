"""The worker: one thread owns the AMQP connection (consumes, publishes, acks); a bounded pool runs
operations, one at a time per VM in arrival order. Knows AMQP, not domains.

Every event goes through the journal's outbox first and is published by the connection thread
with publisher confirms; a message is acked only once its terminal event is confirmed.
"""

from __future__ import annotations

import contextlib
import gc
import os
import queue
import random
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import amqp
import structlog
from amqp.exceptions import ConsumerCancelled, MessageNacked
from kombu import Connection, Consumer, Producer
from kombu.exceptions import OperationalError
from kombu.message import Message

from handlers.connection import LibvirtConnection
from worker import events, logs
from worker.amqp import connect, corked, frame_buffered, read_ahead, receive_available
from worker.brokererrors import classify, connect_each_node, redact
from worker.config import Settings
from worker.domevents import DomainEvents, Ownership
from worker.errors import OpError
from worker.heartbeat import Heartbeat, QueueDepth
from worker.hooks import HookEngine
from worker.journal import FINISHED, STARTED, Journal
from worker.messages import parse_operation, peek
from worker.metrics import Metrics
from worker.runner import Outcome, Runner
from worker.topology import Topology

log = structlog.get_logger()

_MAX_FRAMES_PER_DRAIN = 256  # then the loop publishes and acks before reading more
REASON_HEADERS = ("x-vmworker-error-code", "x-vmworker-error-source", "x-vmworker-reason")


@dataclass
class Delivery:
    message: Message
    generation: int

    @property
    def redelivered(self) -> bool:
        return bool(self.message.delivery_info.get("redelivered"))


@dataclass
class Job:
    request_id: str
    op: Any
    correlation_id: str | None
    deliveries: list[Delivery]
    recovered: bool = False
    replay_of: str | None = None  # the x-replay-of header: this request replays that one
    deadline: datetime | None = None  # x-deadline: not started past it, fails as `expired`
    attempt: int = 1  # which run of the request on this host: 2 and up after the worker died in it

    @property
    def vm(self) -> str:
        return str(self.op.vm.uuid)


@dataclass
class PendingAck:
    """Ack (or dead-letter, then ack) these deliveries once outbox entry `seq` is confirmed."""

    seq: int
    deliveries: list[Delivery]
    dead_letter: dict[str, str] | None = None


@dataclass
class Stats:
    received: int = 0
    ran: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    published: int = 0
    reconnects: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)


class Service:
    """`run()` blocks until `stop()`; safe to run in a thread (tests, the demo)."""

    def __init__(
        self,
        settings: Settings,
        *,
        libvirt: LibvirtConnection | None = None,
        hooks: HookEngine | None = None,
        transport_options: dict[str, Any] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        freeze_gc: bool = False,
    ) -> None:
        self.settings = settings
        self.freeze_gc = freeze_gc
        self.host = settings.host
        self.topology = Topology.from_settings(settings)
        self.lv = libvirt or LibvirtConnection(settings.libvirt_uri)
        self.hooks = hooks or HookEngine(
            settings.hooks_root,
            timeout=settings.hook_timeout,
            output_limit=settings.hook_output_limit,
            inproc=settings.inproc_hooks,
            prewarm=settings.hook_prewarm,
        )
        self.runner = Runner(settings, self.lv, self.hooks)
        self.journal = Journal(settings.state_dir / "journal.sqlite")
        self.transport_options = transport_options or {}
        self.on_event = on_event
        self.stats = Stats()
        self.metrics = Metrics(self.host)
        self.ownership = Ownership()  # VMs our own operations are changing (domevents)
        self._domevents: DomainEvents | None = None
        self._heartbeat: Heartbeat | None = None
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._generation = 0
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="op")
        self._done: queue.Queue[tuple[Job, int, dict[str, str] | None]] = queue.Queue()
        self._acks: deque[PendingAck] = deque()
        self._vm_queues: dict[str, deque[Job]] = {}
        self._running: set[str] = set()  # VMs with an operation in the pool
        self._inflight: dict[str, Job] = {}  # request id -> job, queued or running here
        # a pool thread that finishes a job writes a byte here: the connection thread, waiting
        # for the broker in select(), wakes at once to publish its event and ack
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._conn: Any = None  # the connection being served
        self._events_ch: Any = None
        self._events_producer: Producer | None = None
        self._unconfirmed: set[int] = set()  # delivery tags of events not yet confirmed
        self._nacked: set[int] = set()
        self._next_tag = 1
        self._next_prune = 0.0
        self._flushed_seq = 0  # every outbox event up to this seq is confirmed

    # -- lifecycle ---------------------------------------------------------------------
    def stop(self) -> None:
        """Finish the operations already running, then return from run()."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self) -> None:
        log.info(
            "worker.starting",
            host=self.host,
            broker=_redact(self.settings.broker_urls),
            libvirt=self.settings.libvirt_uri,
            hooks=str(self.settings.hooks_root),
        )
        if not self.settings.allowed_publishers:
            log.warning("worker.any_publisher_allowed", exchange=self.topology.ops.name)
        self._host_chain("before_vmworker_start")
        self._reconcile_journal()
        backoff = 1.0
        try:
            self._start_observers()
            if self.freeze_gc:
                # what start-up made (modules, schemas, libvirt and hook state) lives as long as
                # the process: out of the cyclic collector's sight, a full collection looks at
                # what operations create only (from ~40 ms to ~1 ms at 100 MB: a latency spike)
                gc.collect()
                gc.freeze()
            while True:
                if self._stop.is_set() and not self._inflight:
                    break
                conn = self._connection()
                try:
                    connect_each_node(  # each URL once, in order; the backoff is ours
                        conn,
                        self.settings.broker_urls,
                        lambda url, node, exc: log.warning(
                            "broker.unreachable",
                            url=redact(url),
                            node=node,
                            error=classify(exc)[0],
                        ),
                    )
                    self._serve(conn)
                    backoff = 1.0
                except (
                    *conn.connection_errors,
                    *conn.channel_errors,
                    OSError,
                    OperationalError,  # kombu's wrapper: no broker URL answered
                ) as exc:
                    self.stats.reconnects += 1
                    if isinstance(exc, ConsumerCancelled):  # queue deleted, or moved away
                        log.warning("broker.consumer_cancelled")
                        continue
                    if self.ready.is_set():
                        backoff = 1.0  # we had been connected: a new outage starts over
                    wait = backoff * random.uniform(0.8, 1.2)
                    log.warning("broker.connection_lost", error=repr(exc), retry_in_s=wait)
                    self._wait_offline(wait)
                    backoff = min(backoff * 2, 30.0)
                except Exception:  # a bug must not end the process with operations running
                    self.stats.reconnects += 1
                    log.exception("worker.loop_crashed", retry_in_s=backoff)
                    self._wait_offline(backoff)
                    backoff = min(backoff * 2, 30.0)
                finally:
                    self.ready.clear()
                    with contextlib.suppress(Exception):  # the socket may already be gone
                        conn.release()
        finally:
            self._pool.shutdown(wait=True)
            self._goodbye()  # if not said on a connection, host.offline waits in the outbox
            self._host_chain("after_vmworker_stop")
            self.metrics.close()
            self.journal.close()
            self.lv.close()
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            log.info("worker.stopped", host=self.host)

    def _connection(self) -> Connection:
        return connect(
            self.settings,
            heartbeat=self.settings.amqp_heartbeat,
            transport_options=self.transport_options,
        )

    def _wait_offline(self, seconds: float) -> None:
        """While the broker is away, keep finishing jobs (their events wait in the outbox)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._collect_done()
            if self._stop.is_set() and not self._inflight:
                return
            time.sleep(0.05)

    # -- the journal at start-up and every hour ------------------------------------------
    def _reconcile_journal(self) -> None:
        """What the journal left unfinished (as nova-compute's _init_instance does at start).

        A request that started but did not finish is normally redelivered (its message was
        never acked) and reconciled then, against libvirt. One whose run began on the broker's
        last delivery (x-delivery-count reached delivery_limit) will not be: the worker died
        running it, so the broker has dead-lettered it. Its outcome is unknown; it gets its
        terminal event now, a `fail` with code `delivery_limit`, so that every request that
        had a `before` has a terminal event."""
        self._prune()
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
                self._count("fail")
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

    def _prune(self) -> None:
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

    # -- the connection thread -----------------------------------------------------------
    def _serve(self, conn: Connection) -> None:
        self._generation += 1
        read_ahead(conn)
        self._conn = conn
        self.topology.declare(conn, shared=self.settings.declare_shared)
        self._acks.clear()  # tags of an old channel are void; those messages come back
        self._flushed_seq = 0  # what the last connection could not confirm is sent again
        consume_ch = conn.channel()
        consume_ch.auto_decode = False  # bodies stay the bytes that were sent
        consume_ch.basic_qos(0, self.settings.effective_prefetch, False)
        self._producer = Producer(conn.channel())
        self._open_events_channel(conn)
        host_queue = self.topology.host_queue
        server = getattr(conn.connection, "server_properties", None) or {}  # none in memory://
        version = server.get("version")
        if _has_consumer_timeout(version):  # else only the broker-wide consumer_timeout applies
            timeout = _consumer_timeout_ms(self.settings)
            host_queue.consumer_arguments = {"x-consumer-timeout": timeout}  # type: ignore[attr-defined]
        consumer = Consumer(
            consume_ch,
            queues=[host_queue],
            on_message=self._on_message,
            on_decode_error=self._on_decode_error,
            no_ack=False,
            auto_declare=False,  # declared above; a host's own broker user may not declare more
        )
        consumer.consume()
        consuming = True
        log.info(
            "worker.consuming", queue=self.topology.host_queue.name, generation=self._generation
        )
        self.ready.set()
        self._flush()
        last_beat = time.monotonic()
        while True:
            if self._stop.is_set():
                if consuming:
                    consumer.cancel()
                    consuming = False
                    self._drop_queued()
                if not self._inflight and not self._acks:
                    if self._goodbye():
                        self._flush()  # host.offline, published before we leave
                    return
            with contextlib.suppress(TimeoutError):
                self._drain(conn, timeout=0.01 if self._inflight else 0.1)
            self._collect_done()
            self._flush()
            if time.monotonic() - last_beat > 1.0:
                conn.heartbeat_check()
                last_beat = time.monotonic()
                if last_beat > self._next_prune:
                    self._prune()

    def _on_message(self, message: Message) -> None:
        if self._stop.is_set():
            return  # not taken: the broker gives it back when the channel closes
        try:
            self._receive(message)
        except Exception:  # never let one message take the connection thread down
            log.exception("message.crashed")  # requeued, up to the delivery limit
            with contextlib.suppress(Exception):
                message.reject(requeue=True)

    def _on_decode_error(self, message: Message, exc: Exception) -> None:
        """kombu could not undo the message's `compression` header: bad input like any other."""
        if self._stop.is_set():
            return
        props = message.properties
        err = OpError("undecodable", f"body cannot be decompressed: {exc!r}"[:500], "validation")
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        self._reject(
            Delivery(message, self._generation),
            body,
            props.get("message_id"),
            props.get("correlation_id"),
            err,
        )

    def _receive(self, message: Message) -> None:
        delivery = Delivery(message, self._generation)
        self.stats.received += 1
        if delivery.redelivered:
            self.metrics.redeliveries.inc()
        props = message.properties
        request_id = props.get("message_id")
        correlation_id = props.get("correlation_id")
        body: bytes = message.body if isinstance(message.body, bytes) else message.body.encode()
        try:
            self._authorize(props)  # first: nothing from a stranger is parsed or journaled
            if not request_id:
                raise OpError(
                    "no_message_id",
                    "message has no message_id property (the request id)",
                    "validation",
                )
            op = _parse(body, self.settings.max_body_bytes)
            deadline = _deadline(message.headers or {})
        except OpError as err:
            self._reject(delivery, body, request_id, correlation_id, err)
            return
        req = self.journal.receive(request_id, op.op, str(op.vm.uuid))
        if req.state == FINISHED:  # the journal first: a job may be done but not yet collected
            self._duplicate(delivery, req)
            return
        job = self._inflight.get(request_id)
        if job is not None:  # a redelivery (or a second copy) of something we are on
            log.info(
                "op.in_progress",  # acked with the run under way
                request_id=request_id,
                op=op.op,
                vm=str(op.vm.uuid),
            )
            job.deliveries.append(delivery)
            return
        if _delivery_count(message.headers or {}) >= self.settings.delivery_limit:
            # the broker's last delivery: if it kills us, it is dead-lettered, never redelivered
            self.journal.mark_final_delivery(request_id)
        job = Job(request_id, op, correlation_id, [delivery], recovered=req.state == STARTED)
        job.replay_of = (message.headers or {}).get("x-replay-of")
        job.deadline = deadline
        job.attempt = req.runs + 1
        if job.recovered:
            log.info(
                "op.recovering",
                request_id=request_id,
                op=op.op,
                vm=str(op.vm.uuid),
            )
        self._inflight[request_id] = job
        self._vm_queues.setdefault(job.vm, deque()).append(job)
        self._dispatch(job.vm)

    def _authorize(self, props: dict[str, Any]) -> None:
        allowed = self.settings.allowed_publishers
        if allowed and props.get("user_id") not in allowed:
            raise OpError(
                "unauthorized",
                f"publisher {props.get('user_id')!r} is not allowed"
                " to order operations on this host",
                "unauthorized",
            )

    def _reject(
        self,
        d: Delivery,
        body: bytes,
        request_id: str | None,
        correlation_id: str | None,
        err: OpError,
    ) -> None:
        seen = _peek(body)
        log.warning("message.rejected", request_id=request_id, **logs.error_fields(err))
        rk, ev = events.op_event(
            self.host,
            seen.get("op") or "invalid",
            "fail",
            request_id=request_id,
            correlation_id=correlation_id,
            vm_uuid=seen.get("vm_uuid"),
            vm_name=seen.get("vm_name"),
            redelivered=d.redelivered,
            attempt=0,
            duration_ms=0,
            state="unknown",
            hooks=[],
            error=err.to_event(),
            **_replay_fields(d.message.headers or {}),
        )
        seq = self.journal.enqueue(rk, ev)
        self.metrics.rejected.labels(err.code).inc()
        self._acks.append(PendingAck(seq, [d], _reason(err)))
        self._count("fail")

    def _duplicate(self, d: Delivery, req: Any) -> None:
        recorded = self.journal.terminal_of(req)
        assert recorded is not None
        rk, ev = recorded
        seq = self.journal.enqueue(rk, events.as_duplicate(ev, redelivered=d.redelivered))
        err = ev["data"].get("error")
        dead = None
        if ev["data"].get("phase") == "fail" and err and err.get("source") != "expired":
            dead = _reason(OpError(err["code"], err["message"], err["source"]))
        self._acks.append(PendingAck(seq, [d], dead))
        self.stats.duplicates += 1
        self.metrics.duplicates.inc()
        log.info(
            "op.duplicate",  # its recorded terminal event is published again
            request_id=req.request_id,
            outcome=req.outcome,
        )

    # -- scheduling ----------------------------------------------------------------------
    def _dispatch(self, vm: str) -> None:
        if vm in self._running or self._stop.is_set():
            return
        q = self._vm_queues.get(vm)
        if not q:
            self._vm_queues.pop(vm, None)
            return
        job = q.popleft()
        self._running.add(vm)
        self._pool.submit(self._execute, job)

    def _drop_queued(self) -> None:
        """On stop: operations not yet started stay unacked; the broker gives them back."""
        for vm, q in list(self._vm_queues.items()):
            for job in q:
                self._inflight.pop(job.request_id, None)
            q.clear()
            self._vm_queues.pop(vm, None)

    # -- pool threads --------------------------------------------------------------------
    def _execute(self, job: Job) -> None:
        try:
            structlog.contextvars.bind_contextvars(
                host=self.host, request_id=job.request_id, op=job.op.op, vm=job.vm
            )
            if job.deadline and not job.recovered and job.deadline < datetime.now(UTC):
                expired = OpError(
                    "expired",
                    f"deadline {job.deadline.isoformat()} passed before the operation could start",
                    "expired",
                )
                outcome = Outcome(False, "unknown", 0.0, 0, error=expired)
                self._finish(job, outcome, dead_letter=False)
                return
            rk, ev = self._event(job, "before", recovered=job.recovered)
            self.journal.start(job.request_id, (rk, ev))
            self.ownership.acquire(job.vm, job.request_id, job.op.op)
            try:
                context = {
                    "host": self.host,
                    "correlation_id": job.correlation_id,
                    "attempt": job.attempt,
                }
                outcome = self.runner.run(job.op, request_id=job.request_id, context=context)
            finally:
                self.ownership.release(job.vm, job.request_id)
            self.stats.ran += 1
            self._finish(job, outcome, dead_letter=True)
        except BaseException:
            log.exception("op.job_crashed")
            # leave it unacked: the broker redelivers it, up to the delivery limit
            self._done.put((job, -1, None))
            self._wakeup()
            raise
        finally:
            structlog.contextvars.clear_contextvars()

    def _finish(self, job: Job, outcome: Outcome, *, dead_letter: bool) -> None:
        """Record and queue the terminal event; the connection thread acks once it is confirmed."""
        rk, ev = self._event(job, outcome.phase, recovered=job.recovered, **outcome.event_fields())
        seq = self.journal.finish(job.request_id, outcome.phase, (rk, ev), outcome.attempts)
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
        dead = _reason(outcome.error) if (dead_letter and outcome.error) else None
        self._done.put((job, seq, dead))
        self._wakeup()
        self._count(outcome.phase)
        self.metrics.operation_finished(ev["data"])

    def _event(self, job: Job, phase: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        return events.op_event(
            self.host,
            job.op.op,
            phase,
            request_id=job.request_id,
            correlation_id=job.correlation_id,
            vm_uuid=job.vm,
            vm_name=job.op.vm_name,
            redelivered=any(d.redelivered for d in job.deliveries),
            **({"replay_of": job.replay_of} if job.replay_of else {}),
            **fields,
        )

    def _count(self, outcome: str) -> None:
        self.stats.by_outcome[outcome] = self.stats.by_outcome.get(outcome, 0) + 1

    # -- back on the connection thread -------------------------------------------------------
    def _collect_done(self) -> None:
        while True:
            try:
                job, seq, dead = self._done.get_nowait()
            except queue.Empty:
                return
            if self._inflight.get(job.request_id) is job:
                del self._inflight[job.request_id]
            self._running.discard(job.vm)
            if seq >= 0:
                self._acks.append(PendingAck(seq, job.deliveries, dead))
            else:  # crashed outside the runner: requeued, bounded by the delivery limit
                for d in job.deliveries:
                    if d.generation == self._generation:
                        with contextlib.suppress(Exception):
                            d.message.reject(requeue=True)
            self._dispatch(job.vm)

    def _flush(self) -> None:
        """Publish every unsent outbox event in order (confirmed), then settle the acks that
        were waiting on them: every PendingAck queued before this flush is now covered."""
        settle = len(self._acks)
        durable = self.journal.durable_seq
        if durable > self._flushed_seq:  # else nothing new can be pending: no query
            self._publish_pending()
            self._flushed_seq = durable
        if not settle:
            return
        settled = [self._acks.popleft() for _ in range(settle)]
        current = [
            (pa, d) for pa in settled for d in pa.deliveries if d.generation == self._generation
        ]
        # (a delivery of an older channel is not acked: the broker redelivers it)
        for pa, d in current:  # each dead-lettered copy confirmed before its original is acked
            if pa.dead_letter is not None:
                self._dead_letter(d.message, pa.dead_letter)
        with corked(self._conn):
            for _, d in current:
                d.message.ack()

    def _publish_pending(self) -> None:
        """Every durable unsent outbox event, in order, confirmed (raises if one is not)."""
        while batch := self.journal.pending():
            tags: list[int] = []
            try:
                with corked(self._conn):  # all published in one write ...
                    for entry in batch:
                        tags.append(self._publish_event(entry.routing_key, entry.event, entry.body))
                self._await_confirms()  # ... then one wait for all the confirms
            finally:
                confirmed = [
                    entry
                    for entry, tag in zip(batch, tags, strict=False)
                    if tag not in self._unconfirmed and tag not in self._nacked
                ]
                self.journal.mark_sent([e.seq for e in confirmed])
            self.stats.published += len(confirmed)
            if self.on_event is not None:
                for e in confirmed:
                    self.on_event(e.routing_key, e.event)

    def _open_events_channel(self, conn: Connection) -> None:
        """The channel events go out on, in confirm mode. Confirms are tracked by delivery
        tag, so that a batch is published at once and waited for once (`_await_confirms`):
        one broker round trip per flush instead of one per event."""
        ch = conn.channel()
        self._events_ch = ch
        self._events_exchange = self.topology.events.name
        if not hasattr(ch, "confirm_select"):  # kombu's in-memory transport: nothing to confirm
            self._events_producer = Producer(ch)
            return
        self._events_producer = None
        ch.confirm_select()
        ch._confirm_selected = True  # py-amqp: never again from basic_publish_confirm
        ch.events["basic_ack"].add(self._on_confirm)
        ch.events["basic_nack"].add(self._on_nack)
        self._unconfirmed.clear()
        self._nacked.clear()
        self._next_tag = 1

    def _on_confirm(self, tag: int, multiple: bool) -> None:
        for t in [t for t in self._unconfirmed if t <= tag] if multiple else [tag]:
            self._unconfirmed.discard(t)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        for t in [t for t in self._unconfirmed if t <= tag] if multiple else [tag]:
            if t in self._unconfirmed:
                self._unconfirmed.discard(t)
                self._nacked.add(t)

    def _publish_event(self, rk: str, ev: dict[str, Any], body: bytes = b"") -> int:
        """Publish one event (persistent); returns its delivery tag, confirmed later. `body`
        is the event as the outbox holds it (compact JSON), published as it is."""
        if self._events_producer is not None:  # no confirms on this transport
            events.publish(self._events_producer, self.topology.events, rk, ev)
            return 0
        msg = amqp.Message(
            body or events.encode(ev),
            content_type=events.CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=2,
            message_id=ev["id"],
            correlation_id=ev["data"].get("correlation_id") if "data" in ev else None,
        )
        tag, self._next_tag = self._next_tag, self._next_tag + 1
        self._unconfirmed.add(tag)
        # basic.publish as py-amqp's `_basic_publish` sends it, without the read of the socket
        # it makes first (to notice connection.blocked; the next drain handles that frame) and
        # without waiting for this one confirm: `_await_confirms` waits once for the batch
        self._events_ch.send_method(
            amqp.spec.Basic.Publish, "Bssbb", (0, self._events_exchange, rk, False, False), msg
        )
        return tag

    def _await_confirms(self, timeout: float = 30.0) -> None:
        """Until the broker has confirmed every event published; deliveries that arrive
        meanwhile are taken in as usual."""
        end = time.monotonic() + timeout
        while self._unconfirmed:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no publisher confirm in {timeout:g}s")
            with contextlib.suppress(TimeoutError):  # a wake-up is left for the main loop
                self._drain(self._conn, timeout=min(left, 1.0), wake=False)
        if self._nacked:  # the channel is done for: a new one after the reconnect
            raise MessageNacked("the broker refused an event")

    def _wakeup(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            os.write(self._wake_w, b"x")

    def _drain(self, conn: Connection, timeout: float, *, wake: bool = True) -> None:
        """Handle what the broker sent, waiting up to `timeout` for it or (with `wake`) for a
        pool thread's wake-up (a finished job), whichever comes first. Every frame already
        received is handled before returning: frames read ahead never wait for the socket."""
        waits = [self._wake_r] if wake else []
        sock = getattr(conn.connection, "sock", None)
        pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted
        if sock is None or (pending is not None and pending()):
            conn.drain_events(timeout=timeout)
            return
        if pending is not None or not frame_buffered(conn):
            ready, _, _ = select.select([sock, *waits], [], [], timeout)
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            if sock not in ready:
                return
            if pending is not None:  # TLS: frame by frame, as py-amqp reads them
                conn.drain_events(timeout=timeout)
                return
            receive_available(conn)
        for _ in range(_MAX_FRAMES_PER_DRAIN):  # every whole frame received, from the buffer
            if not frame_buffered(conn):
                break
            # one frame, from the buffer: never waits (drain_events would go on reading until
            # a whole method came, waiting on the socket after a heartbeat frame)
            conn.connection.blocking_read(None)

    def _dead_letter(self, message: Message, reason: dict[str, str]) -> None:
        props = message.properties
        headers = {
            **(message.headers or {}),
            **reason,
            "x-original-user-id": props.get("user_id") or "",
        }
        if not message.errors:  # kombu decompressed the body: the copy is not compressed
            headers.pop("compression", None)
        body = message.body
        if isinstance(body, str):  # py-amqp gives an empty body as ''
            body = body.encode("utf-8", "surrogateescape")
        self._producer.publish(
            body,
            exchange=self.topology.dlx,
            routing_key=self.host,
            content_type=props.get("content_type") or "application/octet-stream",
            content_encoding=props.get("content_encoding") or "binary",
            message_id=props.get("message_id"),
            timestamp=props.get("timestamp"),  # replay chooses by time, too
            correlation_id=props.get("correlation_id"),
            headers=headers,
            delivery_mode=2,
            retry=False,
        )
        self.stats.dead_lettered += 1
        self.metrics.dead_letters.inc()

    # -- observers: state events, heartbeat, metrics (docs/operations.md) --------------------
    def _start_observers(self) -> None:
        s = self.settings
        self.metrics.bind(
            outbox=self.journal.outbox_size,
            inflight=lambda: len(self._inflight),
            connected=self.ready.is_set,
        )
        if s.metrics_port:
            self.metrics.serve(s.metrics_port, s.metrics_address)
        self._domevents = DomainEvents(
            s.libvirt_uri,
            self.host,
            self.journal.enqueue,
            ownership=self.ownership,
            counter=self.metrics,
        ).start()
        self._heartbeat = Heartbeat(
            host=self.host,
            interval=s.heartbeat_interval,
            sink=self.journal.enqueue,
            libvirt_conn=self.lv,
            hooks=self.hooks,
            queue_depth=QueueDepth(self._connection, self.topology.host_queue.name),
            outbox_size=self.journal.outbox_size,
            in_flight=lambda: len(self._inflight),
            on_beat=self.metrics.heartbeats.inc,
            on_inventory=self.metrics.inventory_queued,
            online_after=self.ready,
        ).start()

    def _goodbye(self) -> bool:
        """Stop the observers and queue `host.offline`; True the first time only."""
        dom, self._domevents = self._domevents, None
        beat, self._heartbeat = self._heartbeat, None
        if dom is not None:
            dom.stop()
        if beat is None:
            return False
        beat.stop(offline=True)
        return True

    # -- host hook points ----------------------------------------------------------------
    def _host_chain(self, point: str) -> None:
        try:
            import json

            res = self.hooks.run_chain(
                point,
                json.dumps({"host": self.host}),
                vm_id="",
                custom={},
                context={"host": self.host},
            )
            if res.failed:
                log.warning(
                    "hook.chain_failed", point=point, stderr_tail=logs.tail(res.failure_stderr())
                )
        except Exception:
            log.exception("hook.chain_crashed", point=point)


def _reason(err: OpError) -> dict[str, str]:
    return dict(zip(REASON_HEADERS, (err.code, err.source, err.message[:1000]), strict=True))


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


def _has_consumer_timeout(version: Any) -> bool:
    """RabbitMQ takes a per-consumer `x-consumer-timeout` from 3.11.15 and 3.12 on."""
    if isinstance(version, bytes):
        version = version.decode(errors="replace")
    try:
        parts = tuple(int(p) for p in str(version).split("+")[0].split("-")[0].split(".")[:3])
    except ValueError:
        return False
    return parts >= (3, 11, 15)


def _consumer_timeout_ms(settings: Settings) -> int:
    """Longer than any operation can take: the longest guest shutdown wait (1 h), the longest
    retry deadline, and three hook chains of ten scripts at their timeout; at least 30 min."""
    retry = max((p.deadline_s for p in settings.retry.values()), default=120.0)
    longest = 3600.0 + retry + 3 * 10 * settings.hook_timeout
    return int(max(longest, 1800.0) * 1000)


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


def _redact(urls: list[str]) -> list[str]:
    import re

    return [re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", u) for u in urls]
