"""The AMQP topology of docs/protocol.md, declared idempotently at start (and after every
reconnect)."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from amqp.exceptions import PreconditionFailed
from kombu import Exchange, Queue
from kombu.connection import Connection

from worker.config import Settings

log = structlog.get_logger()
_warned: set[str] = set()  # streams whose differing arguments this process has logged
ONE_GB = 10**9


@dataclass(frozen=True)
class Topology:
    prefix: str
    host: str
    delivery_limit: int = 5
    ops_max_age: str = "7D"
    events_max_age: str = "7D"
    # x-max-length-bytes of the streams (None: no limit); as the settings' defaults
    ops_max_bytes: int | None = 5 * ONE_GB
    events_max_bytes: int | None = 20 * ONE_GB
    segment_bytes: int | None = None  # x-stream-max-segment-size-bytes (None: the broker's)
    # the shared exchanges and streams were made by `vmworker broker setup`: only check that
    # they exist (a passive declare needs no permission), never declare them
    passive: bool = False

    @classmethod
    def from_settings(cls, s: Settings, host: str | None = None) -> Topology:
        return cls(
            s.prefix,
            host or s.host,
            s.delivery_limit,
            s.ops_log_max_age,
            s.events_log_max_age,
            s.ops_log_max_bytes,
            s.events_log_max_bytes,
            s.stream_max_segment_bytes,
            passive=not s.declare_shared,
        )

    # exchanges
    @property
    def ops(self) -> Exchange:
        return Exchange(f"{self.prefix}.ops", "topic", durable=True, passive=self.passive)

    @property
    def events(self) -> Exchange:
        return Exchange(f"{self.prefix}.events", "topic", durable=True, passive=self.passive)

    @property
    def dlx(self) -> Exchange:
        return Exchange(f"{self.prefix}.ops.dlx", "topic", durable=True, passive=self.passive)

    # queues
    @property
    def host_queue(self) -> Queue:
        return Queue(
            f"{self.prefix}.ops.{self.host}",
            self.ops,
            routing_key=self.host,
            durable=True,
            queue_arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": self.delivery_limit,
                "x-dead-letter-exchange": self.dlx.name,
                "x-dead-letter-routing-key": self.host,
            },
        )

    @property
    def dead_queue(self) -> Queue:
        return Queue(
            f"{self.prefix}.ops.{self.host}.dead",
            self.dlx,
            routing_key=self.host,
            durable=True,
            queue_arguments={"x-queue-type": "quorum"},
        )

    @property
    def ops_log(self) -> Queue:
        return stream(
            f"{self.prefix}.ops.log",
            self.ops,
            self.ops_max_age,
            max_bytes=self.ops_max_bytes,
            segment_bytes=self.segment_bytes,
        )

    @property
    def events_log(self) -> Queue:
        return stream(
            f"{self.prefix}.events.log",
            self.events,
            self.events_max_age,
            max_bytes=self.events_max_bytes,
            segment_bytes=self.segment_bytes,
        )

    def ops_log_from(self, offset: object) -> Queue:
        """The ops log, to read from `offset`: used as it is, never declared."""
        return reader(self.ops_log, offset)

    def events_log_from(self, offset: object) -> Queue:
        """The events log, to read from `offset`: used as it is, never declared."""
        return reader(self.events_log, offset)

    def stream_limits(self) -> dict[str, dict[str, object]]:
        """Each stream's limits as a RabbitMQ policy definition (`vmworker broker setup`
        applies them so to a stream made before they were arguments)."""
        out: dict[str, dict[str, object]] = {}
        for q in (self.ops_log, self.events_log):
            args = getattr(q, "queue_arguments", None) or {}
            out[q.name] = {
                key: args[arg]
                for key, arg in (
                    ("max-age", "x-max-age"),
                    ("max-length-bytes", "x-max-length-bytes"),
                    ("stream-max-segment-size-bytes", "x-stream-max-segment-size-bytes"),
                )
                if arg in args
            }
        return out

    def declare(self, conn: Connection, *, shared: bool | None = None) -> None:
        """Declare every exchange and queue this host uses; safe to repeat. With `shared`
        false (default: when `passive`), only this host's queues (`declare_host`), after
        checking the shared exchanges exist: what a host's own broker user may do."""
        if shared is None:
            shared = not self.passive
        if not shared:
            self.check_shared(conn)
            self.declare_host(conn)
            return
        with conn.channel() as ch:
            for ex in (self.ops, self.events, self.dlx):
                ex.bind(ch).declare()
            for q in (self.host_queue, self.dead_queue):
                q.bind(ch).declare()
        for name in self.declare_streams(conn):
            if name not in _warned:  # once a process, not at every reconnect
                _warned.add(name)
                log.warning(
                    "stream.arguments_differ",
                    stream=name,
                    fix="vmworker broker setup (applies its limits as a policy)",
                )

    def declare_host(self, conn: Connection) -> None:
        """This host's queue and dead-letter queue, and their bindings; never an exchange."""
        with conn.channel() as ch:
            for q in (self.host_queue, self.dead_queue):
                bound = q.bind(ch)
                bound.queue_declare()
                bound.queue_bind()

    def check_shared(self, conn: Connection) -> None:
        """Passive declares: NOT_FOUND (a channel error) if the shared exchanges are missing,
        i.e. `vmworker broker setup` has not been run; needs no permission."""
        with conn.channel() as ch:
            for ex in (self.ops, self.events, self.dlx):
                ch.exchange_declare(ex.name, ex.type, passive=True)

    def declare_shared(self, conn: Connection) -> list[str]:
        """Only what publishers and readers need (exchanges and the two streams); the streams
        that exist with other arguments (declare_streams)."""
        with conn.channel() as ch:
            for ex in (self.ops, self.events, self.dlx):
                ex.bind(ch).declare()
        return self.declare_streams(conn)

    def declare_streams(self, conn: Connection) -> list[str]:
        """Declare both streams and bind them; the names of those that exist with other
        arguments (made before their byte limit was one: RabbitMQ refuses to change a queue's
        arguments, with PRECONDITION_FAILED). Those are used as they are: `vmworker broker
        setup` gives them their limits as a policy (docs/deploy.md). Logs nothing: a CLI's
        output stays its own."""
        differ = []
        for q in (self.ops_log, self.events_log):
            try:
                with conn.channel() as ch:
                    q.bind(ch).declare()
            except PreconditionFailed:
                differ.append(q.name)
                with conn.channel() as ch:  # it exists (else NOT_FOUND): bind it all the same
                    ch.queue_declare(q.name, passive=True)
                    q.bind(ch).queue_bind()
        return differ


def stream(
    name: str,
    exchange: Exchange,
    max_age: str,
    offset: object = "next",
    *,
    max_bytes: int | None = None,
    segment_bytes: int | None = None,
) -> Queue:
    """A stream queue bound to every key of `exchange`; `offset` is where a consumer starts.
    Beside a passive exchange (Topology.passive), the stream too is only used, never declared.
    Old data goes when it is older than `max_age` or the stream is over `max_bytes`, a whole
    segment (`segment_bytes`) at a time."""
    args: dict[str, object] = {"x-queue-type": "stream", "x-max-age": max_age}
    if max_bytes is not None:
        args["x-max-length-bytes"] = max_bytes
    if segment_bytes is not None:
        args["x-stream-max-segment-size-bytes"] = segment_bytes
    return Queue(
        name,
        exchange,
        routing_key="#",
        durable=True,
        no_declare=bool(exchange.passive),
        queue_arguments=args,
        consumer_arguments={"x-stream-offset": offset},
    )


def reader(q: Queue, offset: object) -> Queue:
    """`q` to consume from `offset`, never declared: whatever arguments the stream was made
    with (declare_streams made it, or `vmworker broker setup` did)."""
    return Queue(
        q.name,
        q.exchange,
        routing_key=q.routing_key,
        durable=True,
        no_declare=True,
        queue_arguments=getattr(q, "queue_arguments", None),
        consumer_arguments={"x-stream-offset": offset},
    )
