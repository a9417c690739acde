"""The worker's AMQP link: the connection and its channels, consuming, publisher confirms,
events published from the outbox in batches, acks and dead-lettering, reconnecting with backoff
across the broker URLs. Knows AMQP, not operations. Public kombu and py-amqp APIs only.

Frames are read and written through `FrameIO` (worker/frameio.py): one `recv` per drain on
plain TCP, and a flush's publishes (or acks) in one write.

Everything here runs on one thread, the one that owns the connection (py-amqp connections are
not thread-safe); other threads only call `wake()`.

Confirms: the connection is opened without kombu's `confirm_publish` (which waits for each
publish's confirm), the events channel is put in confirm mode with `confirm_select()`, and the
broker's `basic.ack`/`basic.nack` arrive through the channel's `events` callbacks. A batch is
published at once and its confirms waited for once: one round trip per flush, not per event.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import amqp
import structlog
from amqp.exceptions import ConsumerCancelled, MessageNacked
from kombu import Connection, Consumer, Producer
from kombu.exceptions import OperationalError
from kombu.message import Message

from worker import events
from worker.amqp import connect
from worker.brokererrors import classify, connect_each_node, redact
from worker.config import Settings
from worker.frameio import FrameIO, quiet_publishes
from worker.jobs import Delivery, Settle, Stats
from worker.journal import Journal
from worker.metrics import Metrics
from worker.topology import Topology

log = structlog.get_logger()

_MAX_METHODS_PER_DRAIN = 256  # then the loop publishes and acks before reading more


class Link:
    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        outbox: Journal,
        *,
        stats: Stats,
        metrics: Metrics,
        on_message: Callable[[Message], None],
        on_decode_error: Callable[[Message, Exception], None],
        transport_options: dict[str, Any] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        on_open: Callable[[int | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.outbox = outbox
        self.stats = stats
        self.metrics = metrics
        self.on_message = on_message
        self.on_decode_error = on_decode_error
        self.transport_options = transport_options or {}
        self.on_event = on_event
        self.on_open = on_open  # (host queue depth): on every connection, before consuming
        self.ready = threading.Event()  # consuming on a live connection
        self.generation = 0  # one per connection: a delivery tag is void on any other
        self._conn: Any = None
        self._consumer: Consumer | None = None
        self._settles: deque[Settle] = deque()
        self._flushed_seq = 0  # every outbox event up to this seq is confirmed
        self._last_beat = 0.0
        # a pool thread that finishes a job writes a byte here: the connection thread, waiting
        # for the broker in select(), wakes at once to publish its event and ack
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._events_ch: Any = None
        self._producer: Producer | None = None  # dead-letter copies, and events if no confirms
        self._confirming = False
        self._unconfirmed: set[int] = set()  # delivery tags not yet confirmed
        self._nacked: set[int] = set()
        self._next_tag = 1
        self._io = FrameIO()
        self._own_reads = False  # FrameIO reads this connection's frames (plain TCP)
        self._events_exchange = ""

    def connection(self) -> Connection:
        """A new (lazy) connection: publishes on it do not wait, confirms are ours; its frames
        are written through `FrameIO` (py-amqp's `frame_writer` parameter)."""
        options: dict[str, Any] = {"confirm_publish": False}
        if all(
            u.split("://", 1)[0].lower() in ("amqp", "amqps") for u in self.settings.broker_urls
        ):
            options |= {
                "frame_writer": self._io.frame_writer,
                "on_blocked": lambda reason: log.warning("broker.blocked", reason=reason),
                "on_unblocked": lambda: log.info("broker.unblocked"),
            }
        return connect(
            self.settings,
            heartbeat=self.settings.amqp_heartbeat,
            transport_options={**options, **self.transport_options},
        )

    def side_connection(self) -> Connection:
        """A new (lazy) connection for another thread's own use (the heartbeat's queue depth):
        py-amqp's own frame reading and writing. Never `connection()` for that: its frames
        would go through this link's `FrameIO`, which serves one connection at a time (the
        link's)."""
        return connect(
            self.settings,
            heartbeat=self.settings.amqp_heartbeat,
            transport_options=dict(self.transport_options),
        )

    # -- connecting and reconnecting -------------------------------------------------------
    def run(
        self, serve: Callable[[], None], *, done: Callable[[], bool], idle: Callable[[], None]
    ) -> None:
        """Connect, open the channels and consume, then `serve()`; after a broker outage, again,
        with backoff, until `done()`. `idle()` is called every 50 ms while offline."""
        backoff = 1.0
        while not done():
            conn = self.connection()
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
                self._open(conn)
                serve()
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
                self._wait_offline(wait, done, idle)
                backoff = min(backoff * 2, 30.0)
            except Exception:  # a bug must not end the process with operations running
                self.stats.reconnects += 1
                log.exception("worker.loop_crashed", retry_in_s=backoff)
                self._wait_offline(backoff, done, idle)
                backoff = min(backoff * 2, 30.0)
            finally:
                self.ready.clear()
                self._consumer = None
                with contextlib.suppress(Exception):  # the socket may already be gone
                    conn.release()

    def _wait_offline(
        self, seconds: float, done: Callable[[], bool], idle: Callable[[], None]
    ) -> None:
        """While the broker is away, keep finishing jobs (their events wait in the outbox)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            idle()
            if done():
                return
            time.sleep(0.05)

    def _open(self, conn: Connection) -> None:
        self.generation += 1
        self._conn = conn
        amqp_conn = conn.connection
        self._own_reads = FrameIO.can_read(amqp_conn)
        if isinstance(amqp_conn, amqp.Connection):  # not kombu's in-memory transport
            quiet_publishes(amqp_conn)
        self.topology.declare(conn, shared=self.settings.declare_shared)
        self._settles.clear()  # tags of an old channel are void; those messages come back
        self._flushed_seq = 0  # what the last connection could not confirm is sent again
        consume_ch = conn.channel()
        consume_ch.auto_decode = False  # bodies stay the bytes that were sent
        consume_ch.basic_qos(0, self.settings.effective_prefetch, False)
        self._open_events_channel(conn)
        host_queue = self.topology.host_queue
        server = getattr(conn.connection, "server_properties", None) or {}  # none in memory://
        if _has_consumer_timeout(server.get("version")):  # else the broker-wide one applies
            timeout = _consumer_timeout_ms(self.settings)
            host_queue.consumer_arguments = {"x-consumer-timeout": timeout}  # type: ignore[attr-defined]
        if self.on_open is not None:
            depth = consume_ch.queue_declare(host_queue.name, passive=True).message_count
            self.on_open(int(depth))
            self.flush()  # what on_open queued (host.online) goes out before any delivery
        self._consumer = Consumer(
            consume_ch,
            queues=[host_queue],
            on_message=self.on_message,
            on_decode_error=self.on_decode_error,
            no_ack=False,
            auto_declare=False,  # declared above; a host's own broker user may not declare more
        )
        self._consumer.consume()
        self._last_beat = time.monotonic()
        log.info("worker.consuming", queue=host_queue.name, generation=self.generation)
        self.ready.set()

    def _open_events_channel(self, conn: Connection) -> None:
        """The channel events and dead-lettered copies go out on, in confirm mode."""
        ch = conn.channel()
        self._events_ch = ch
        self._events_exchange = self.topology.events.name
        self._producer = Producer(ch)
        self._unconfirmed.clear()
        self._nacked.clear()
        self._next_tag = 1  # a channel in confirm mode numbers its publishes from 1
        self._confirming = hasattr(ch, "confirm_select")  # not on kombu's in-memory transport
        if self._confirming:
            ch.confirm_select()
            ch.events["basic_ack"].add(self._on_confirm)
            ch.events["basic_nack"].add(self._on_nack)

    def cancel(self) -> None:
        """Consume no more (on stop); what was delivered and not acked goes back to the queue
        when the channel closes."""
        if self._consumer is not None:
            self._consumer.cancel()
            self._consumer = None

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- reading -------------------------------------------------------------------------
    def wake(self) -> None:
        """From any thread: end the connection thread's current wait."""
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            os.write(self._wake_w, b"x")

    def drain(self, timeout: float, *, wake: bool = True) -> None:
        """Handle what the broker sent, waiting up to `timeout` for it or (with `wake`) for a
        `wake()`, whichever comes first."""
        conn = self._conn
        sock = getattr(conn.connection, "sock", None)  # none on kombu's in-memory transport
        if sock is None:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=timeout)
            return
        pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted, not in select
        if pending is None or not pending():
            waits = [sock, self._wake_r] if wake else [sock]
            readable, _, _ = select.select(waits, [], [], timeout)
            if self._wake_r in readable:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            if sock not in readable:
                return
        if self._own_reads:  # all the socket holds, in one read (up to 256 KiB in 4)
            self._io.receive(conn.connection)
            return
        for _ in range(_MAX_METHODS_PER_DRAIN):  # every method already received, no waiting
            try:
                conn.drain_events(timeout=0)
            except TimeoutError:
                return
            if not (pending is not None and pending()) and not _readable(sock):
                return  # one select instead of a failed read between two timeout changes

    def heartbeat(self) -> None:
        """Send and check AMQP heartbeats (at most once a second)."""
        now = time.monotonic()
        if now - self._last_beat > 1.0:
            self._conn.heartbeat_check()
            self._last_beat = now

    # -- publishing and settling -----------------------------------------------------------
    def settle(self, settle: Settle) -> None:
        """Ack (or dead-letter and ack) these deliveries at the flush that confirms `seq`."""
        self._settles.append(settle)

    @property
    def unsettled(self) -> int:
        return len(self._settles)

    def requeue(self, deliveries: list[Delivery]) -> None:
        """Give these back to the broker now (a redelivery, bounded by the delivery limit)."""
        for d in deliveries:
            if d.generation == self.generation:
                with contextlib.suppress(Exception):
                    d.message.reject(requeue=True)

    def flush(self) -> None:
        """Publish every unsent outbox event in order (confirmed), then settle what was
        waiting on them: every Settle queued before this flush is now covered."""
        n = len(self._settles)
        durable = self.outbox.durable_seq
        if durable > self._flushed_seq:  # else nothing new can be pending: no query
            self._publish_pending()
            self._flushed_seq = durable
        if not n:
            self._wake_for_more()
            return
        settled = [self._settles.popleft() for _ in range(n)]
        current = [(s, d) for s in settled for d in s.deliveries if d.generation == self.generation]
        # (a delivery of an older channel is not acked: the broker redelivers it)
        dead = [(d, s.dead_letter) for s, d in current if s.dead_letter is not None]
        if dead:  # each dead-lettered copy confirmed before its original is acked
            with self._io.corked():
                for d, headers in dead:
                    self._dead_letter(d.message, headers)
            self._await_confirms()
        with self._io.corked():  # every ack in one write
            for _, d in current:
                d.message.ack()
        self._wake_for_more()

    def _wake_for_more(self) -> None:
        """What came while this flush waited for confirms (a delivery taken in, an event
        queued) is flushed at the loop's next turn, not after its next wait for the broker."""
        if self._settles or self.outbox.durable_seq > self._flushed_seq:
            self.wake()

    def _publish_pending(self) -> None:
        """Every durable unsent outbox event, in order, confirmed (raises if one is not)."""
        while batch := self.outbox.pending():
            tags: list[int] = []
            try:
                with self._io.corked():  # all published at once, in one write ...
                    for entry in batch:
                        tags.append(self._publish_event(entry.routing_key, entry.event, entry.body))
                self._await_confirms()  # ... then one wait for all the confirms
            finally:
                confirmed = [
                    entry
                    for entry, tag in zip(batch, tags, strict=False)
                    if tag not in self._unconfirmed and tag not in self._nacked
                ]
                self.outbox.mark_sent([e.seq for e in confirmed])
            self.stats.published += len(confirmed)
            if self.on_event is not None:
                for e in confirmed:
                    self.on_event(e.routing_key, e.event)

    def _publish_event(self, rk: str, ev: dict[str, Any], body: bytes = b"") -> int:
        """Publish one event (persistent); returns its delivery tag, confirmed later. `body`
        is the event as the outbox holds it (compact JSON), published as it is."""
        if not self._confirming:
            assert self._producer is not None
            events.publish(self._producer, self.topology.events, rk, ev)
            return 0
        msg = amqp.Message(
            body or events.encode(ev),
            content_type=events.CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=2,
            message_id=ev["id"],
            correlation_id=ev["data"].get("correlation_id") if "data" in ev else None,
        )
        # not waiting for its confirm: `_await_confirms` waits once for the batch
        self._events_ch.basic_publish(msg, exchange=self._events_exchange, routing_key=rk)
        return self._track()

    def _track(self) -> int:
        """The delivery tag of what was just published on the confirm channel."""
        if not self._confirming:
            return 0
        tag, self._next_tag = self._next_tag, self._next_tag + 1
        self._unconfirmed.add(tag)
        return tag

    def _on_confirm(self, tag: int, multiple: bool) -> None:
        for t in [t for t in self._unconfirmed if t <= tag] if multiple else [tag]:
            self._unconfirmed.discard(t)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        for t in [t for t in self._unconfirmed if t <= tag] if multiple else [tag]:
            if t in self._unconfirmed:
                self._unconfirmed.discard(t)
                self._nacked.add(t)

    def _await_confirms(self, timeout: float = 30.0) -> None:
        """Until the broker has confirmed everything published; deliveries that arrive
        meanwhile are taken in as usual."""
        end = time.monotonic() + timeout
        while self._unconfirmed:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no publisher confirm in {timeout:g}s")
            self.drain(min(left, 1.0), wake=False)  # a wake-up is left for the main loop
        if self._nacked:  # the channel is done for: a new one after the reconnect
            raise MessageNacked("the broker refused an event")

    def _dead_letter(self, message: Message, reason: dict[str, str]) -> None:
        """Republish a refused message to the dead-letter exchange as it came: its body, every
        property and header its publisher set, plus the reason headers."""
        props = dict(message.properties)
        headers = {k: v for k, v in (message.headers or {}).items() if k not in _BROKER_HEADERS}
        headers.update(reason)
        user = props.pop("user_id", None)
        headers["x-original-user-id"] = user or ""
        if user and user == getattr(self._conn, "userid", None):
            props["user_id"] = user  # the broker lets us sign as ourselves only
        expiration = props.pop("expiration", None)
        if expiration is not None:  # kept, not applied: a dead letter waits for an operator
            headers["x-original-expiration"] = expiration
        if not message.errors:  # kombu decompressed the body: the copy is not compressed
            headers.pop("compression", None)
        body = message.body
        if isinstance(body, str):  # py-amqp gives an empty body as ''
            body = body.encode("utf-8", "surrogateescape")
        copied = {k: v for k, v in props.items() if k in _COPIED and v is not None}
        stamp = copied.get("timestamp")
        if isinstance(stamp, datetime):  # py-amqp reads it as a naive UTC datetime
            copied["timestamp"] = int(stamp.replace(tzinfo=stamp.tzinfo or UTC).timestamp())
        if not self._confirming:  # kombu's in-memory transport
            assert self._producer is not None
            self._producer.publish(
                body,
                exchange=self.topology.dlx,
                routing_key=self.settings.host,
                headers=headers,
                retry=False,
                **copied,
            )
        else:
            msg = amqp.Message(body, application_headers=headers, **copied)
            self._events_ch.basic_publish(
                msg, exchange=self.topology.dlx.name, routing_key=self.settings.host
            )
        self._track()
        self.stats.dead_lettered += 1
        self.metrics.dead_letters.inc()


# what a dead-lettered copy keeps of the original's properties (user_id and expiration: above)
_COPIED = frozenset(
    {
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
        "cluster_id",
    }
)
# headers the broker added on delivery, not the publisher
_BROKER_HEADERS = frozenset({"x-delivery-count"})


def _readable(sock: Any) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


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
