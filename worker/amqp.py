"""The one way to open a broker connection: the worker, the CLI tools and the tests all call
`connect(settings)`, so failover, TLS and the login method are the same everywhere."""

from __future__ import annotations

import contextlib
import socket
import ssl
import types
from collections.abc import Iterator
from errno import EAGAIN, EINTR
from typing import Any

from amqp.transport import SSLTransport, TCPTransport
from kombu import Connection

from worker.config import Settings


class _FailoverConnection(Connection):
    """kombu keeps one `ssl` dict for every URL of a failover list and fills in its
    `server_hostname` once, from the first URL it connects to; after a failover the certificate
    would be checked against the wrong name. Here each URL gets its own copy, with its own name
    (taken before kombu rewrites `localhost` to 127.0.0.1)."""

    def _init_params(self, *args: Any, **kwargs: Any) -> None:
        super()._init_params(*args, **kwargs)
        if isinstance(self.ssl, dict):
            self.ssl = {**self.ssl, "server_hostname": self.hostname}


def uses_tls(settings: Settings) -> bool:
    """True when the broker URLs are amqps://. Mixing amqp:// and amqps:// URLs, or setting
    ssl_* with plain amqp:// URLs, is refused rather than silently sent in clear."""
    schemes = {u.split("://", 1)[0].lower() for u in settings.broker_urls}
    if "amqps" in schemes and schemes != {"amqps"}:
        raise ValueError("broker URLs mix amqp:// and amqps://; use amqps:// for every node")
    tls = schemes == {"amqps"}
    if not tls and (settings.ssl_ca or settings.ssl_cert or settings.ssl_key):
        raise ValueError("ssl_ca/ssl_cert/ssl_key are set but the broker URL is not amqps://")
    if settings.login_method == "EXTERNAL" and not (tls and settings.ssl_cert):
        raise ValueError("login_method EXTERNAL needs amqps:// URLs and ssl_cert/ssl_key")
    return tls


def ssl_options(settings: Settings) -> dict[str, Any]:
    """py-amqp TLS options: the server certificate is always verified (against ssl_ca, else the
    system's CAs) and must name the host of the URL; a client certificate when ssl_cert is set."""
    opts: dict[str, Any] = {
        "cert_reqs": ssl.CERT_REQUIRED,
        "tls_minimum_version": ssl.TLSVersion.TLSv1_2,
    }
    if settings.ssl_ca:
        opts["ca_certs"] = str(settings.ssl_ca)
    if settings.ssl_cert:
        opts["certfile"] = str(settings.ssl_cert)
        if settings.ssl_key:
            opts["keyfile"] = str(settings.ssl_key)
    return opts


def connect(
    settings: Settings,
    *,
    heartbeat: int = 0,
    transport_options: dict[str, Any] | None = None,
    connect_timeout: float = 5.0,
) -> Connection:
    """A (lazy) kombu Connection to the broker URLs of `settings`, failing over round-robin,
    with publisher confirms. `heartbeat` is 0 for short-lived tools; a long-lived process that
    calls `heartbeat_check()` passes `settings.amqp_heartbeat`."""
    tls = uses_tls(settings)
    kwargs: dict[str, Any] = {}
    if tls:
        kwargs["ssl"] = ssl_options(settings)
    if settings.login_method:
        kwargs["login_method"] = settings.login_method
    return _FailoverConnection(
        settings.broker_urls,
        heartbeat=heartbeat,
        failover_strategy="round-robin",
        transport_options={"confirm_publish": True, **(transport_options or {})},
        connect_timeout=connect_timeout,
        **kwargs,
    )


def broker_user(settings: Settings) -> str | None:
    """The user name the broker knows this connection by (for `user_id`), or None with
    EXTERNAL login (the name comes from the client certificate; set it explicitly)."""
    if settings.login_method == "EXTERNAL":
        return None
    conn = Connection(settings.broker_urls[0])
    return str(conn.userid) if conn.userid else None


# -- reading frames in fewer system calls ---------------------------------------------------
READ_AHEAD = 16384
_FRAME_OVERHEAD = 8  # type (1) + channel (2) + size (4) ... + frame-end (1)


def _read_ahead(
    self: Any, n: int, initial: bool = False, _errnos: tuple[int, ...] = (EAGAIN, EINTR)
) -> bytes:
    """py-amqp's `TCPTransport._read`, except that it asks the socket for whatever is there (up
    to READ_AHEAD bytes) instead of exactly the bytes of the frame part it needs: a delivery is
    three frames read in three parts each, so one `recv` instead of about nine. What is read
    beyond `n` waits in the transport's `_read_buffer`, where py-amqp keeps partial reads."""
    recv = self._quick_recv
    rbuf = self._read_buffer
    try:
        while len(rbuf) < n:
            try:
                s = recv(max(n - len(rbuf), READ_AHEAD))
            except OSError as exc:
                if exc.errno in _errnos:
                    if initial and self.raise_on_initial_eintr:
                        raise TimeoutError() from None
                    continue
                raise
            if not s:
                raise OSError("Server unexpectedly closed connection")
            rbuf += s
    except BaseException:
        self._read_buffer = rbuf
        raise
    result, self._read_buffer = rbuf[:n], rbuf[n:]
    return bytes(result)


def read_ahead(conn: Connection) -> None:
    """Make a connected plain-TCP kombu connection read frames with `_read_ahead` (TLS transports
    and kombu's in-memory transport are left as they are)."""
    transport = getattr(getattr(conn, "connection", None), "transport", None)
    if isinstance(transport, TCPTransport) and not isinstance(transport, SSLTransport):
        transport._read = types.MethodType(_read_ahead, transport)


def frame_buffered(conn: Connection) -> bool:
    """True when a whole frame has already been read from the socket and waits in py-amqp's
    buffer: it is handled without asking the socket (which may have nothing more to say)."""
    transport = getattr(getattr(conn, "connection", None), "transport", None)
    buf = getattr(transport, "_read_buffer", b"")
    if len(buf) < 7:
        return False
    size = int.from_bytes(buf[3:7], "big")
    return len(buf) >= size + _FRAME_OVERHEAD


def receive_available(conn: Connection) -> int:
    """Append to py-amqp's buffer whatever the socket holds right now, never waiting (the
    caller knows it is readable); returns the bytes read. No timeout is set or restored on the
    socket for it: each such change is a system call. Plain TCP only."""
    transport = conn.connection.transport
    try:
        data = transport.sock.recv(READ_AHEAD, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return 0
    if not data:
        transport.connected = False
        raise ConnectionError("Server unexpectedly closed connection")
    transport._read_buffer += data
    return len(data)


@contextlib.contextmanager
def corked(conn: Connection) -> Iterator[None]:
    """Frames written inside the block leave in one `sendall` at its end instead of one each
    (a system call, and on a busy worker a wait for the GIL, per frame). Nothing inside may wait
    for an answer to what it wrote. Plain TCP only; elsewhere frames go out as written."""
    transport = getattr(getattr(conn, "connection", None), "transport", None)
    if not isinstance(transport, TCPTransport) or isinstance(transport, SSLTransport):
        yield
        return
    parts: list[bytes] = []
    write = transport._write
    # py-amqp hands over views of a buffer it reuses for the next frame: copied, each
    transport._write = lambda data: parts.append(bytes(data))
    try:
        yield
    finally:
        transport._write = write
        if parts:
            transport.write(b"".join(parts))  # py-amqp's error handling, as for any write
