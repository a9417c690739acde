"""Following `<prefix>.events.log` and `<prefix>.ops.log` into the fleet store.

Both streams are consumed from the offset after the one stored with the data (`first` on the
first start). Messages are folded in batches (BATCH_SIZE messages or BATCH_WAIT seconds, which
comes first); a batch's rows and the streams' new offsets are written in one transaction, and
the messages are acknowledged only after it commits. So a process killed at any point restarts
where its last commit left off: nothing lost, nothing stored twice.

Beside the streams, a second thread asks the broker (passive declares, its own connection)
for the depth of every known host's queue and dead-letter queue, and reads a dead-letter queue
whose depth changed (every message held unacknowledged, then all given back: vmworker/replay.py's
`take_queued`), so the store shows what the dead-letter queues hold now.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
import structlog
from kombu import Connection, Consumer
from kombu.message import Message
from sqlalchemy.engine import Engine

from vmworker.replay import NoSuchQueue, Selection, take_queued
from worker import logs
from worker.amqp import connect
from worker.cliopts import connection_options, settings_or_exit
from worker.config import Settings
from worker.fleet import store as st
from worker.fleet.fold import StreamEvent, apply_batch
from worker.history import LogMessage
from worker.topology import Topology

log = structlog.get_logger()

BATCH_SIZE = 200
BATCH_WAIT = 0.1  # seconds
PREFETCH_BATCHES = 4  # the broker sends this many batches ahead (acked once committed)
POLL_INTERVAL = 15.0  # seconds between reading the queue depths from the broker

OnCommit = Callable[[list[dict[str, Any]]], None]


def event_of(message: Message) -> StreamEvent | None:
    try:
        ev = json.loads(message.body)
    except ValueError:
        ev = None
    offset = (message.headers or {}).get("x-stream-offset")
    rk = message.delivery_info.get("routing_key")
    return StreamEvent(offset, rk, ev if isinstance(ev, dict) else {})


class Ingest:
    """Follows both streams of `topology` into the store on `engine`."""

    def __init__(
        self,
        engine: Engine,
        topology: Topology | Settings,
        on_commit: OnCommit | None = None,
        *,
        broker: str | None = None,
        batch_size: int = BATCH_SIZE,
        batch_wait: float = BATCH_WAIT,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.settings = topology if isinstance(topology, Settings) else None
        if isinstance(topology, Settings):
            topology = Topology.from_settings(topology)
        self.engine = engine
        self.topology = topology
        self._broker_given = broker is not None
        self.broker = broker or (
            self.settings.broker if self.settings else "amqp://guest:guest@127.0.0.1:5672//"
        )
        self.on_commit = on_commit
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.poll_interval = poll_interval
        self.stored = 0  # messages stored by this process
        self.batches = 0
        self.lag_s = 0.0  # age of the newest event of the last batch when it was committed
        self._pending: list[tuple[str, Message, StreamEvent | LogMessage]] = []

    # -- the stream names the offsets are kept under --------------------------------------
    @property
    def events_stream(self) -> str:
        return self.topology.events_log.name

    @property
    def ops_stream(self) -> str:
        return self.topology.ops_log.name

    def apply(self, conn: sa.Connection, message: Any) -> list[dict[str, Any]]:
        """Fold one event (a dict, or a StreamEvent) or ops log message (LogMessage)."""
        return apply_batch(conn, [message])

    def connect(self, heartbeat: int = 0) -> Connection:
        """A connection as the worker makes them (failover, TLS) when built from settings."""
        if self.settings is not None and not self._broker_given:
            return connect(self.settings, heartbeat=heartbeat)
        return Connection(self.broker, heartbeat=heartbeat)

    def start_offsets(self) -> dict[str, object]:
        with self.engine.connect() as conn:
            out: dict[str, object] = {}
            for name in (self.events_stream, self.ops_stream):
                off = st.get_offset(conn, name)
                out[name] = "first" if off is None else off + 1
        return out

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Follow the streams until `stop` is set; reconnects after a broker failure."""
        poller = threading.Thread(target=self._poll_loop, args=(stop,), daemon=True)
        poller.start()
        while not stop.is_set():
            try:
                self._follow(stop)
            except Exception as e:  # a broker failure: reconnect from the stored offsets
                if stop.is_set():
                    break
                log.warning("fleet.ingest_reconnecting", error=str(e))
                self._pending.clear()  # not stored: they come again from the stored offset
                stop.wait(1.0)
        poller.join(timeout=5)

    def _follow(self, stop: threading.Event) -> None:
        t = self.topology
        starts = self.start_offsets()
        hb = self.settings.amqp_heartbeat if self.settings else 30
        with self.connect(heartbeat=hb) as conn:
            conn.ensure_connection(max_retries=3)
            ch = conn.channel()
            ch.basic_qos(0, PREFETCH_BATCHES * self.batch_size, False)
            qe = t.events_log_from(starts[self.events_stream])  # used, never declared
            qo = t.ops_log_from(starts[self.ops_stream])

            def on_event(m: Message) -> None:
                se = event_of(m)
                if se is not None:
                    self._pending.append((self.events_stream, m, se))

            def on_op(m: Message) -> None:
                self._pending.append((self.ops_stream, m, LogMessage.of(m)))

            consumers = [
                Consumer(ch, queues=[qe], on_message=on_event, no_ack=False),
                Consumer(ch, queues=[qo], on_message=on_op, no_ack=False),
            ]
            for c in consumers:
                c.consume()
            log.info(
                "fleet.ingest_following", prefix=t.prefix, **{k: str(v) for k, v in starts.items()}
            )
            first_at: float | None = None
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=self.batch_wait)
                if hb:
                    conn.heartbeat_check()
                if self._pending and first_at is None:
                    first_at = time.monotonic()
                due = first_at is not None and time.monotonic() - first_at >= self.batch_wait
                if len(self._pending) >= self.batch_size or (self._pending and due):
                    self._commit()
                    first_at = None
            if self._pending:
                self._commit()
            for c in consumers:
                with contextlib.suppress(Exception):
                    c.cancel()

    def _commit(self) -> None:
        pending, self._pending = self._pending, []
        last: dict[str, int] = {}
        for name, _, item in pending:
            off = item.offset
            if isinstance(off, int):
                last[name] = max(last.get(name, -1), off)
        with self.engine.begin() as conn:
            live = apply_batch(conn, [item for _, _, item in pending])
            for name, off in last.items():
                st.set_offset(conn, name, off)
        # one ack for the batch: both consumers share a channel, whose delivery tags grow
        max(pending, key=lambda x: x[1].delivery_tag)[1].ack(multiple=True)
        self.stored += len(pending)
        self.batches += 1
        newest = max((r["at"] for r in live if r.get("at")), default=None)
        if newest:
            self.lag_s = max(0.0, time.time() - newest)
        if self.on_commit is not None and live:
            try:
                self.on_commit(live)
            except Exception as e:  # a listener's failure is not the ingest's
                log.warning("fleet.ingest_on_commit_failed", error=str(e))

    # -- the broker's side: queue depths and dead letters -----------------------------------
    def _poll_loop(self, stop: threading.Event) -> None:
        dead_seen: dict[str, int] = {}
        while not stop.is_set():
            try:
                with self.connect() as conn:
                    conn.ensure_connection(max_retries=3)
                    while not stop.is_set():
                        self.poll(conn, dead_seen)
                        stop.wait(self.poll_interval)
            except Exception as e:
                log.warning("fleet.ingest_depths_failed", error=str(e))
                stop.wait(self.poll_interval)

    def poll(self, conn: Connection, dead_seen: dict[str, int] | None = None) -> None:
        """Read every known host's queue depths, and the dead letters of each host whose
        dead-letter queue's depth changed since the last poll (`dead_seen`)."""
        dead_seen = {} if dead_seen is None else dead_seen
        with self.engine.connect() as db:
            names = [r[0] for r in db.execute(sa.select(st.hosts.c.host))]
        now = time.time()
        depths: list[dict[str, Any]] = []
        probe = _Depths(conn)
        try:
            for host in names:
                ht = Topology(self.topology.prefix, host)
                depths.append(
                    {
                        "_host": host,
                        "broker_depth": probe.depth(ht.host_queue.name),
                        "dead_depth": probe.depth(ht.dead_queue.name),
                        "depth_at": now,
                    }
                )
        finally:
            probe.close()
        with self.engine.begin() as db:
            if depths:
                db.execute(
                    st.hosts.update()
                    .where(st.hosts.c.host == sa.bindparam("_host"))
                    .values(
                        broker_depth=sa.bindparam("broker_depth"),
                        dead_depth=sa.bindparam("dead_depth"),
                        depth_at=sa.bindparam("depth_at"),
                    ),
                    depths,
                )
        for d in depths:
            host, n = d["_host"], d["dead_depth"]
            if n is None or dead_seen.get(host) == n:
                continue
            self.read_dead_letters(conn, host)
            dead_seen[host] = n

    def read_dead_letters(self, conn: Connection, host: str) -> int:
        """Store what HOST's dead-letter queue holds now; every message is given back."""
        try:
            chosen, rest = take_queued(
                conn, self.topology, host, Selection(), as_new=False, to_host=None, dead=True
            )
        except NoSuchQueue as e:  # a host without one (yet)
            log.info("fleet.ingest_dead_letters_unread", host=host, error=str(e))
            return 0
        now = time.time()
        rows = []
        try:
            for i, p in enumerate(chosen):
                m = p.message
                h = m.headers
                rows.append(
                    {
                        "host": host,
                        "position": i,
                        "message_id": m.message_id,
                        "correlation_id": m.correlation_id,
                        "op": m.op,
                        "vm_uuid": m.vm_uuid,
                        "error_code": h.get("x-vmworker-error-code"),
                        "error_source": h.get("x-vmworker-error-source"),
                        "reason": h.get("x-vmworker-reason"),
                        "published_at": m.timestamp,
                        "headers": json.loads(json.dumps(h, default=str)),
                        "properties": json.loads(json.dumps(m.properties, default=str)),
                        "body": m.body,
                        "seen_at": now,
                    }
                )
        finally:
            held = [p.raw for p in chosen if p.raw is not None] + rest
            for raw in held:
                raw.reject(requeue=True)
            if held:  # take_queued's channel
                with contextlib.suppress(Exception):
                    held[0].channel.close()
        with self.engine.begin() as db:
            db.execute(st.dead_letters.delete().where(st.dead_letters.c.host == host))
            if rows:
                db.execute(st.dead_letters.insert(), rows)
        return len(rows)


class _Depths:
    """Passive declares on one channel (a missing queue closes it: the next one is opened)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.ch: Any = None

    def depth(self, name: str) -> int | None:
        try:
            if self.ch is None:
                self.ch = self.conn.channel()
            return int(self.ch.queue_declare(name, passive=True).message_count)
        except self.conn.channel_errors:
            self.ch = None  # the broker closed it
            return None

    def close(self) -> None:
        if self.ch is not None:
            with contextlib.suppress(Exception):
                self.ch.close()


@click.command()
@connection_options
@click.option("--url", help="the store's database URL (default: sqlite in the state directory)")
@click.option("--poll-interval", type=float, default=POLL_INTERVAL, show_default=True)
@click.option("--batch-size", type=int, default=BATCH_SIZE, show_default=True)
def main(
    broker: str | None,
    prefix: str | None,
    config: Path | None,
    url: str | None,
    poll_interval: float,
    batch_size: int,
) -> None:
    """Follow the events and ops logs into the fleet store until SIGTERM/SIGINT (the data
    side of `vmworker fleet serve`, alone)."""
    s = settings_or_exit(config, broker=broker, prefix=prefix)
    logs.configure(s.log_level, host="fleet")
    engine = st.open_store(url or st.default_url(s.state_dir))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Ingest(engine, s, poll_interval=poll_interval, batch_size=batch_size).run(stop)


if __name__ == "__main__":
    main()
