"""The worker's frame I/O on a real RabbitMQ connection: writes gathered into one `sendall`
(`corked`) and frames read ahead into py-amqp's buffer (`receive_available`, `frame_buffered`)."""

from __future__ import annotations

import select
import time
import uuid

import amqp
from kombu import Connection

from tests.support import BROKER
from worker.amqp import corked, frame_buffered, read_ahead, receive_available


def _queue(ch: amqp.Channel) -> str:
    name = f"test-amqp-io-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(name, durable=False, auto_delete=False, exclusive=False)
    return name


def test_corked_publishes_leave_in_one_write_and_arrive_intact() -> None:
    with Connection(BROKER) as conn:
        conn.connect()
        ch = conn.channel()
        name = _queue(ch)
        try:
            transport = conn.connection.transport
            writes: list[int] = []
            sendall = transport._write
            transport._write = lambda data: (writes.append(len(data)), sendall(data))
            bodies = [f"body-{i}-".encode() * (i + 1) for i in range(50)]
            with corked(conn):
                for body in bodies:  # py-amqp reuses one buffer for every frame it writes
                    ch.basic_publish(amqp.Message(body), exchange="", routing_key=name)
            assert len(writes) == 1  # fifty messages, one system call
            got = []
            end = time.monotonic() + 10
            while len(got) < len(bodies) and time.monotonic() < end:
                msg = ch.basic_get(name, no_ack=True)
                if msg is not None:
                    got.append(msg.body)
            assert got == bodies
        finally:
            ch.queue_delete(name)


def test_frames_read_ahead_are_all_handled_from_the_buffer() -> None:
    with Connection(BROKER) as conn:
        conn.connect()
        read_ahead(conn)
        ch = conn.channel()
        name = _queue(ch)
        try:
            for i in range(20):
                ch.basic_publish(amqp.Message(f"m{i}".encode()), exchange="", routing_key=name)
            seen: list[bytes] = []
            ch.basic_consume(name, callback=lambda m: seen.append(m.body), no_ack=True)
            amqp_conn = conn.connection
            sock = amqp_conn.transport.sock
            end = time.monotonic() + 10
            while len(seen) < 20 and time.monotonic() < end:
                if not frame_buffered(conn):
                    if sock not in select.select([sock], [], [], 0.5)[0]:
                        continue
                    receive_available(conn)
                while frame_buffered(conn):
                    amqp_conn.blocking_read(None)  # one frame, never waiting on the socket
            assert seen == [f"m{i}".encode() for i in range(20)]
            assert not frame_buffered(conn)
        finally:
            ch.queue_delete(name)


def test_a_partial_frame_is_not_taken_for_a_whole_one() -> None:
    class _T:
        _read_buffer = b""

    class _C:
        transport = _T()

    class _K:
        connection = _C()

    k = _K()
    heartbeat = b"\x08\x00\x00\x00\x00\x00\x00\xce"
    method = b"\x01\x00\x01\x00\x00\x00\x04abcd\xce"
    for buf, whole in [
        (b"", False),
        (heartbeat[:7], False),
        (heartbeat, True),
        (method[:11], False),
        (method, True),
        (method + heartbeat[:3], True),
    ]:
        k.connection.transport._read_buffer = buf
        assert frame_buffered(k) is whole, buf  # type: ignore[arg-type]
