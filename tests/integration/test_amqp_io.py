"""The worker's AMQP link on a real RabbitMQ: the py-amqp behaviour it is built on (publishes
that do not wait, confirms through channel events, a read that never waits; FrameIO's frames
handed to `on_inbound_frame`, its corked `frame_writer`, the publish that reads first only with
the `connection.blocked` capability), a batch of outbox events published with one wait for its
confirms, a pool thread's wake-up ending a wait, and what comes during a flush flushed at once."""

from __future__ import annotations

import contextlib
import select
import threading
import time
import uuid
from typing import Any

import amqp
import pytest
from kombu import Connection

from tests.support import BROKER, EventTap
from worker.frameio import FrameIO, quiet_publishes
from worker.jobs import Delivery, Settle, Stats
from worker.journal import Journal
from worker.link import Link
from worker.metrics import Metrics


def _queue(ch: Any) -> str:
    name = f"test-amqp-io-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(name, durable=False, auto_delete=False, exclusive=False)
    return name


def test_py_amqp_publishes_without_waiting_and_confirms_through_channel_events() -> None:
    """What `Link` relies on; if a py-amqp release changes it, this fails first."""
    with Connection(BROKER, transport_options={"confirm_publish": False}) as conn:
        conn.connect()
        ch = conn.channel()
        name = _queue(ch)
        acked: set[int] = set()
        try:
            ch.confirm_select()
            ch.events["basic_ack"].add(
                lambda tag, multiple: acked.update(range(1, tag + 1) if multiple else [tag])
            )
            n = 200
            for i in range(n):
                ch.basic_publish(amqp.Message(f"m{i}".encode()), exchange="", routing_key=name)
            # publish returned before the broker could confirm the last one: it did not wait
            assert n not in acked
            sock = conn.connection.sock  # what the link's select() waits on
            assert sock.fileno() >= 0
            end = time.monotonic() + 10
            while len(acked) < n and time.monotonic() < end:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.5)
            assert acked == set(range(1, n + 1))  # tags numbered from 1 on the channel
            with pytest.raises(TimeoutError):  # nothing more: a read that never waits
                conn.drain_events(timeout=0)
            assert ch.queue_declare(name, passive=True).message_count == n
        finally:
            ch.queue_delete(name)


def _receive_until(io: FrameIO, conn: Connection, done: Any, timeout: float = 10.0) -> None:
    """What the link's drain does: wait for the socket, then FrameIO takes what is there."""
    sock = conn.connection.sock
    end = time.monotonic() + timeout
    while not done():
        left = end - time.monotonic()
        assert left > 0, "the broker's frames did not come"
        if select.select([sock], [], [], min(left, 0.5))[0]:
            io.receive(conn.connection)


def test_frameio_reads_whole_frames_in_few_calls_and_leaves_py_amqp_in_step() -> None:
    """Deliveries of every size (empty, small, one body frame over 64 KiB, several body frames
    of frame_max) come whole and in order through FrameIO, with far fewer `recv` than frames;
    py-amqp's own read (a declare's answer) works after it; a corked block is one write."""
    io = FrameIO()
    options = {"confirm_publish": False, "frame_writer": io.frame_writer}
    with Connection(BROKER, transport_options=options) as conn:
        conn.connect()
        assert FrameIO.can_read(conn.connection)
        ch = conn.channel()
        name = _queue(ch)
        try:
            bodies = [b"", b"x", *(f"m{i}".encode() * 50 for i in range(300))]
            bodies += [b"a" * 70_000, bytes(range(256)) * 1200]  # 70 kB; 307 kB: 3 body frames
            ch.confirm_select()
            acked: set[int] = set()
            ch.events["basic_ack"].add(
                lambda tag, multiple: acked.update(range(1, tag + 1) if multiple else [tag])
            )
            writes = io.writes
            with io.corked():
                for b in bodies:
                    ch.basic_publish(amqp.Message(b), exchange="", routing_key=name)
            assert io.writes == writes + 1  # every publish of the block in one write
            _receive_until(io, conn, lambda: len(acked) == len(bodies))

            got: list[bytes] = []
            ch.basic_consume(name, callback=lambda m: got.append(m.body), no_ack=True)
            recvs = io.recvs
            _receive_until(io, conn, lambda: len(got) == len(bodies))
            assert [g or b"" for g in got] == bodies  # (py-amqp gives an empty body as '')
            assert io.recvs - recvs < len(bodies)  # 3 frames and more each, fewer reads in all
            assert ch.queue_declare(name, passive=True).message_count == 0  # py-amqp in step
        finally:
            ch.queue_delete(name)


@pytest.mark.parametrize("quiet", [False, True])
def test_py_amqp_reads_before_a_publish_only_with_the_blocked_capability(quiet: bool) -> None:
    """py-amqp reads the socket before each publish (to notice `connection.blocked`) as long
    as its `client_properties` announce the capability; `quiet_publishes` ends that, so a
    delivery waiting in the socket is handled by the link's next read, not inside a publish."""
    with Connection(BROKER, transport_options={"confirm_publish": False}) as conn:
        conn.connect()
        assert conn.connection.client_properties["capabilities"]["connection.blocked"]
        if quiet:
            quiet_publishes(conn.connection)
        ch = conn.channel()
        name = _queue(ch)
        try:
            got: list[bytes] = []
            ch.basic_consume(name, callback=lambda m: got.append(m.body), no_ack=True)
            ch.basic_publish(amqp.Message(b"waiting"), exchange="", routing_key=name)
            sock = conn.connection.sock
            assert select.select([sock], [], [], 10)[0]  # the delivery is in the socket
            ch.basic_publish(amqp.Message(b"other"), exchange="", routing_key=name + ".none")
            assert got == ([] if quiet else [b"waiting"])
            _receive_until(FrameIO(), conn, lambda: got == [b"waiting"])
        finally:
            ch.queue_delete(name)


def _link(env: Any, journal: Journal, on_message: Any = None, **kw: Any) -> Link:
    """A link on `env`'s topology; `kw`: more of Link's callbacks (on_event ...)."""
    return Link(
        env.settings(),
        env.topology,
        journal,
        stats=Stats(),
        metrics=Metrics(env.host),
        on_message=on_message or (lambda m: None),
        on_decode_error=lambda m, e: None,
        **kw,
    )


def _serve_once(link: Link, serve: Any) -> None:
    """Connect, consume, run `serve` on the connection thread, then leave."""
    failures: list[BaseException] = []

    def once() -> None:
        try:
            serve()
        except BaseException as exc:  # reported below, not retried by the link
            failures.append(exc)

    link.run(once, done=lambda: bool(failures) or link.generation > 0, idle=lambda: None)
    if failures:
        raise failures[0]


def test_a_batch_of_outbox_events_is_published_in_order_and_confirmed(env, tmp_path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    tap = EventTap(env.topology).start()
    link = _link(env, journal)
    try:
        ids = []
        for i in range(300):
            ev = {"id": f"e{i}", "data": {"n": i}}
            journal.enqueue(f"{env.host}.host.heartbeat", ev)
            ids.append(ev["id"])

        def serve() -> None:
            link.flush()
            assert journal.outbox_size() == 0  # every one confirmed, so marked sent

        _serve_once(link, serve)
        tap.wait(lambda: len(tap.events) >= len(ids))
        assert [e["id"] for e in tap.events] == ids
        assert link.stats.published == len(ids)
    finally:
        tap.stop()
        link.close()
        journal.close()


def test_a_wake_up_ends_the_wait_for_the_broker_at_once(env, tmp_path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    link = _link(env, journal)
    waited: list[float] = []

    def serve() -> None:
        threading.Timer(0.2, link.wake).start()  # as a pool thread that finished a job
        t0 = time.monotonic()
        link.drain(timeout=10)
        waited.append(time.monotonic() - t0)

    try:
        _serve_once(link, serve)
    finally:
        link.close()
        journal.close()
    assert waited and waited[0] < 5


@pytest.mark.parametrize("settled_before", [False, True], ids=["nothing-settled", "dead-letter"])
@pytest.mark.parametrize("comes", ["delivery", "event"])
def test_what_comes_while_a_flush_waits_for_confirms_is_flushed_without_a_wait(
    env, tmp_path, settled_before: bool, comes: str
) -> None:
    """A delivery taken in (its refusal to settle) or an event queued while a flush waits for
    the broker's confirms goes out at the loop's next turn: the wait for the broker that
    follows the flush ends at once instead of running its whole timeout (the loop's tick)."""
    journal = Journal(tmp_path / "journal.sqlite")
    got: list[Any] = []
    # on_event is called inside the flush, once its events are confirmed
    link = _link(env, journal, got.append, on_event=lambda rk, ev: during())
    pending: list[Any] = []

    def during() -> None:
        while pending:
            pending.pop()()

    waited: list[float] = []

    def serve() -> None:
        for i in range(2):
            env.publish("pause_vm", body={"op": "pause_vm", "n": i})
        end = time.monotonic() + 10
        while len(got) < 2:
            assert time.monotonic() < end, "the two deliveries did not come"
            link.drain(timeout=0.5)
        first, second = (Delivery(m, link.generation) for m in got)
        if settled_before:  # refused, dead-lettered: the flush waits for that copy's confirm
            link.settle(Settle(0, [first], dead_letter={"x-error-code": "invalid"}))
        else:
            first.message.ack()
        journal.enqueue(f"{env.host}.host.heartbeat", {"id": "e1", "data": {}})
        if comes == "delivery":
            pending.append(lambda: link.settle(Settle(0, [second])))
        else:
            second.message.ack()
            pending.append(
                lambda: journal.enqueue(f"{env.host}.host.heartbeat", {"id": "e2", "data": {}})
            )
        link.flush()
        assert not pending  # it did come during the flush
        t0 = time.monotonic()
        link.drain(timeout=10)  # the loop's wait for the broker (its tick: 100 ms)
        waited.append(time.monotonic() - t0)
        link.flush()
        assert link.unsettled == 0 and journal.outbox_size() == 0

    try:
        _serve_once(link, serve)
    finally:
        link.close()
        journal.close()
    assert waited and waited[0] < 5, f"the loop waited {waited[0]:.1f}s for nothing"
