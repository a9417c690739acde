"""Broker failures as one line a person can act on: which URL (password hidden), what went wrong,
what to check. The CLI and the worker's log both say it this way; configuration mistakes are
caught here before anything connects."""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from amqp.exceptions import AMQPError
from kombu import Connection
from kombu.exceptions import OperationalError

from worker.config import Settings

# kombu's in-process transport is for the demo and tests; every real broker is amqp(s)://
SCHEMES = ("amqp", "amqps", "pyamqp", "memory")

# to the last "@": a password written with a raw "@" or "/" is hidden whole too
_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):.*@")


class ConfigError(ValueError):
    """A setting that can never work; reported before anything starts."""


def redact(url: str) -> str:
    """The URL with its password replaced by `***`."""
    return _PASSWORD.sub(r"\1:***@", url)


def redact_all(urls: list[str]) -> str:
    return ";".join(redact(u) for u in urls)


def check_broker_settings(settings: Settings) -> None:
    """ConfigError (one line) for a broker URL or TLS setting that cannot work."""
    from worker.amqp import uses_tls

    if not settings.broker_urls:
        raise ConfigError("broker: no URL given")
    for url in settings.broker_urls:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - parsed lazily; raises ValueError on a bad port
        except ValueError as exc:
            raise ConfigError(f"broker URL {redact(url)}: {exc}") from None
        if parts.scheme.lower() not in SCHEMES:
            raise ConfigError(
                f"broker URL {redact(url)}: scheme must be amqp:// or amqps://"
                f" (amqp://user:password@host:5672/vhost)"
            )
    try:
        uses_tls(settings)
    except ValueError as exc:
        raise ConfigError(f"{exc} ({redact_all(settings.broker_urls)})") from None
    for name in ("ssl_ca", "ssl_cert", "ssl_key"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"{name}: no such file: {path}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what caused it (kombu wraps the socket's error in its own)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def classify(exc: BaseException) -> tuple[str, str]:
    """(what went wrong, what to check) for a failure talking to the broker."""
    for e in _chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            return (
                f"TLS certificate not accepted ({getattr(e, 'reason', None)}: {e.verify_message})",
                "does ssl_ca hold the CA that signed the broker's certificate, and does the"
                " certificate name the host of the URL?",
            )
        if isinstance(e, ssl.SSLError):
            return (
                f"TLS handshake failed ({getattr(e, 'reason', None) or e})",
                "amqps:// needs the broker's TLS port (usually 5671); amqp:// the plain one"
                " (usually 5672)",
            )
        if isinstance(e, socket.gaierror):
            return (
                f"host name not found ({e.strerror})",
                "check the host name in the broker URL and this host's DNS",
            )
        if isinstance(e, ConnectionRefusedError):
            return (
                "connection refused",
                "is RabbitMQ running and listening on that host and port?",
            )
        if isinstance(e, TimeoutError):  # socket.timeout is TimeoutError
            return (
                "no answer (timed out)",
                "is that the broker's AMQP port, is a firewall dropping packets, is the"
                " broker overloaded or blocked?",
            )
        if isinstance(e, AMQPError) and e.code in (403, 530):
            text = e.reply_text or str(e)
            if "Login was refused" in text or e.method_sig in ((0, 0), (10, 40)):
                if e.code == 530:
                    return (f"refused: {text}", "check the vhost in the URL and the user's access")
                return (
                    "authentication failed (ACCESS_REFUSED)",
                    "check the user name and password in the URL (or the client certificate)",
                )
            return (f"refused: {text}", "check this broker user's permissions")
        if isinstance(e, AMQPError) and e.code == 404:
            return (
                f"not found: {e.reply_text or e}",
                "has `vmworker broker setup` been run with this prefix?",
            )
        if isinstance(e, AMQPError) and e.code == 320:
            return (f"connection closed by the broker: {e.reply_text or e}", "see the broker log")
        if isinstance(e, ConnectionResetError) or (
            isinstance(e, OSError) and "unexpectedly closed" in str(e)
        ):
            return (
                "the broker closed the connection",
                "if that port is TLS, the URL must be amqps://; else see the broker log",
            )
        if isinstance(e, OSError) and e.strerror:
            return (e.strerror.lower(), "check the broker URL and the network")
    return (f"{type(exc).__name__}: {exc}", "see the broker log")


def describe(exc: BaseException, url: str) -> str:
    """One line: the redacted URL, what went wrong and what to check."""
    what, check = classify(exc)
    what = " ".join(what.split())
    return f"cannot use the broker at {redact(url)}: {what} — {check}"


# what a broker failure can be raised as, from kombu, py-amqp, the socket or TLS
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    AMQPError,
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
    socket.gaierror,
)


def connect_each_node(
    conn: Connection,
    urls: list[str],
    on_failure: Callable[[str, str, BaseException], Any],
    **kwargs: Any,
) -> int:
    """Try the URLs of `conn` once each, in order (kombu's round-robin from the first),
    calling `on_failure(url, node, error)` (node: "2/3") for every failed attempt, the last one
    too, then raising its error. Returns the index of the node connected to."""
    failures = 0

    def failed(exc: BaseException) -> None:
        i = failures % len(urls)
        on_failure(urls[i], f"{i + 1}/{len(urls)}", exc)

    def errback(exc: BaseException, _interval: float) -> None:
        nonlocal failures
        # kombu calls this before switching to the next URL: it is the one just tried
        failed(exc)
        failures += 1

    try:
        conn.ensure_connection(
            errback=errback,
            max_retries=max(0, len(urls) - 1),
            interval_start=0,
            interval_step=0.2,
            interval_max=1,
            **kwargs,
        )
    except Exception as exc:
        failed(exc)
        raise
    return failures % len(urls)
