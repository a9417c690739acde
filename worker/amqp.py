"""The one way to open a broker connection: the worker, the CLI tools and the tests all call
`connect(settings)`, so failover, TLS and the login method are the same everywhere."""

from __future__ import annotations

import ssl
from typing import Any

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
    with publisher confirms (each publish waits for its own; the worker's link passes
    `confirm_publish: False` and awaits them by batch). `heartbeat` is 0 for short-lived tools;
    a long-lived process that calls `heartbeat_check()` passes `settings.amqp_heartbeat`."""
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
