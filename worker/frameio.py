"""The link's frame reading and writing in few system calls, through py-amqp's public parts.

py-amqp reads a frame in three `recv` calls (header, payload, end byte), each between two socket
timeout changes when nothing may be waited for (`drain_events(timeout=0)`), writes each method
in its own `sendall`, and before every publish reads the socket once more to notice a
`connection.blocked`. On a busy worker every one of those system calls gives up the GIL and
waits to take it back from the pool threads.

`FrameIO` does the same work with:
- **reading**: one non-blocking `recv` of whatever the socket holds (`Connection.sock`), split
  into whole frames here and each handed to `Connection.on_inbound_frame`, the handler py-amqp's
  own `blocking_read` hands its frames to (the same dispatch, heartbeat accounting and
  callbacks). A frame only partly arrived is completed at once, so nothing is ever left in
  this buffer between two calls and py-amqp's own reads (a declare's answer) stay in step.
  Plain TCP only: a TLS socket keeps py-amqp's reading.
- **writing**: `frame_writer`, given to `amqp.Connection(frame_writer=...)`, is py-amqp's own
  frame writer on a transport whose `write` can be corked: the frames written in a `corked()`
  block leave in one `sendall` at its end.
- **`connection.blocked`**: announced to the broker as usual (its notifications arrive with the
  other frames and go to `on_blocked`/`on_unblocked`); once connected, `quiet_publishes` takes
  the capability out of the connection's `client_properties`, which py-amqp consults before
  each publish only to decide whether to read first.

tests/integration/test_amqp_io.py pins each py-amqp behaviour this relies on.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from struct import unpack_from
from typing import Any

from amqp.method_framing import frame_writer as amqp_frame_writer

_HEADER = 7  # type (1) + channel (2) + size (4); the payload; then the frame-end byte
_FRAME_END = 0xCE
_CHUNK = 65536
_PARTIAL_FRAME_WAIT = 30.0  # the broker writes whole frames: the rest is in flight


class FrameIO:
    """One per link; `frame_writer` is handed to every connection it opens."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._parts: list[bytes] | None = None  # corked: what waits for the one write
        self._transport: Any = None
        self.recvs = 0  # system calls made, for tests and profiles
        self.writes = 0

    # -- writing ---------------------------------------------------------------------------
    def frame_writer(self, connection: Any, transport: Any) -> Any:
        """`amqp.Connection(frame_writer=...)`: py-amqp's writer, writing through `_write`."""
        self._transport = transport
        self._parts = None
        self._buf.clear()  # a new connection: nothing of the old stream is valid
        return amqp_frame_writer(connection, self)

    def write(self, data: Any) -> None:
        if self._parts is not None:
            self._parts.append(bytes(data))  # py-amqp reuses the buffer `data` is a view of
        else:
            self.writes += 1
            self._transport.write(data)

    @contextlib.contextmanager
    def corked(self) -> Iterator[None]:
        """Frames written inside leave in one write at the end (also when the block raises).
        Nothing inside may wait for an answer to what it wrote."""
        if self._parts is not None or self._transport is None:  # nested, or not connected
            yield
            return
        self._parts = []
        try:
            yield
        finally:
            parts, self._parts = self._parts, None
            if parts:
                self.writes += 1
                self._transport.write(b"".join(parts))  # py-amqp's error handling, as usual

    # -- reading ---------------------------------------------------------------------------
    @staticmethod
    def can_read(connection: Any) -> bool:
        """Plain TCP (a TLS socket decrypts in records: py-amqp reads it)."""
        sock = getattr(connection, "sock", None)
        return isinstance(sock, socket.socket) and not hasattr(sock, "pending")

    def receive(self, connection: Any, max_reads: int = 4) -> int:
        """Handle every frame the socket holds now (up to `max_reads` reads of 64 KiB), without
        waiting for more (only for the rest of a frame already begun); returns the frames
        handled. Raises as py-amqp's read would: `ConnectionError` when the broker closed, the
        dispatch's errors as they come."""
        sock = connection.sock
        handled = 0
        for _ in range(max_reads):
            try:
                data = sock.recv(_CHUNK, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return handled
            finally:
                self.recvs += 1
            if not data:
                raise ConnectionError("Server unexpectedly closed connection")
            self._buf += data
            handled += self._dispatch(connection)
            if self._buf:
                self._complete(sock)
                handled += self._dispatch(connection)
            if len(data) < _CHUNK:
                break  # what the socket held is all read
        return handled

    def _complete(self, sock: Any) -> None:
        """Read the rest of the frame begun in the buffer."""
        end = time.monotonic() + _PARTIAL_FRAME_WAIT
        while self._buf and not self._whole():
            left = end - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise TimeoutError("a frame from the broker did not arrive whole")
            try:
                data = sock.recv(_CHUNK, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            finally:
                self.recvs += 1
            if not data:
                raise ConnectionError("Server unexpectedly closed connection")
            self._buf += data

    def _whole(self) -> bool:
        buf = self._buf
        return len(buf) >= _HEADER and len(buf) >= _HEADER + unpack_from(">I", buf, 3)[0] + 1

    def _dispatch(self, connection: Any) -> int:
        """Hand each whole frame of the buffer to py-amqp, in order; keep the rest."""
        buf, pos, n = self._buf, 0, 0
        on_frame = connection.on_inbound_frame
        try:
            while len(buf) - pos >= _HEADER:
                frame_type, channel, size = unpack_from(">BHI", buf, pos)
                end = pos + _HEADER + size
                if len(buf) <= end:
                    break
                if buf[end] != _FRAME_END:
                    raise ConnectionError(f"bad AMQP frame end {buf[end]:#x}")
                payload = bytes(buf[pos + _HEADER : end])
                pos = end + 1
                n += 1
                on_frame((frame_type, channel, payload))
        finally:
            del buf[:pos]
        return n


def quiet_publishes(connection: Any) -> None:
    """Once connected: py-amqp no longer reads the socket before each publish to notice a
    `connection.blocked` (the notification is still announced, and read with the rest)."""
    props = connection.client_properties
    caps = props.get("capabilities") or {}
    if caps.get("connection.blocked"):
        connection.client_properties = {
            **props,
            "capabilities": {**caps, "connection.blocked": False},
        }
