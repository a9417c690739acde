"""The worker's AMQP link on a real RabbitMQ: the py-amqp behaviour it is built on (publishes
that do not wait, confirms through channel events, a read that never waits), a batch of outbox
events published with one wait for its confirms, and a pool thread's wake-up ending a wait."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import Any

import amqp
import pytest
from kombu import Connection

from tests.support import BROKER, EventTap
from worker.jobs import Stats
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


def _link(env: Any, journal: Journal) -> Link:
    return Link(
        env.settings(),
        env.topology,
        journal,
        stats=Stats(),
        metrics=Metrics(env.host),
        on_message=lambda m: None,
        on_decode_error=lambda m, e: None,
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
