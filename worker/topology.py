"""The AMQP topology of docs/protocol.md, declared idempotently at start (and after every
reconnect)."""

from __future__ import annotations

from dataclasses import dataclass

from kombu import Exchange, Queue
from kombu.connection import Connection

from worker.config import Settings


@dataclass(frozen=True)
class Topology:
    prefix: str
    host: str
    delivery_limit: int = 5
    ops_max_age: str = "7D"
    events_max_age: str = "7D"
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
        return stream(f"{self.prefix}.ops.log", self.ops, self.ops_max_age)

    @property
    def events_log(self) -> Queue:
        return stream(f"{self.prefix}.events.log", self.events, self.events_max_age)

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
            for q in (self.host_queue, self.dead_queue, self.ops_log, self.events_log):
                q.bind(ch).declare()

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

    def declare_shared(self, conn: Connection) -> None:
        """Only what publishers and readers need (exchanges and the two streams)."""
        with conn.channel() as ch:
            for ex in (self.ops, self.events, self.dlx):
                ex.bind(ch).declare()
            for q in (self.ops_log, self.events_log):
                q.bind(ch).declare()


def stream(name: str, exchange: Exchange, max_age: str, offset: object = "next") -> Queue:
    """A stream queue bound to every key of `exchange`; `offset` is where a consumer starts.
    Beside a passive exchange (Topology.passive), the stream too is only used, never declared."""
    return Queue(
        name,
        exchange,
        routing_key="#",
        durable=True,
        no_declare=bool(exchange.passive),
        queue_arguments={"x-queue-type": "stream", "x-max-age": max_age},
        consumer_arguments={"x-stream-offset": offset},
    )
