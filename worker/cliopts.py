"""What the CLI commands share: the connection options and --idle, settings, the broker
connection, and broker failures turned into one line with exit code 2 (worker.brokererrors)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from kombu import Connection
from pydantic import ValidationError

from worker.config import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

broker_option = click.option("--broker", help="broker URL (several separated by ';')")
config_option = click.option("--config", type=click.Path(path_type=Path), help="TOML config file")
prefix_option = click.option(
    "--prefix", help="name prefix of exchanges and queues (default: config, else vm)"
)


def idle_option(help: str, default: float = 1.0) -> Callable[[F], F]:
    """--idle: the quiet seconds after which a command takes a stream as read to its end."""
    return click.option("--idle", type=float, default=default, show_default=True, help=help)


# the broker URL this command connected to (or last tried), for messages about later failures
_url: str | None = None


class BrokerFailure(click.ClickException):
    """The broker could not be used, or the configuration cannot work: one line, exit code 2."""

    exit_code = 2


def connection_options(f: F) -> F:
    """--broker, --prefix and --config, for commands that read or publish on the broker."""
    return broker_option(prefix_option(config_option(f)))


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
    return " ".join(str(exc).split())


def settings_or_exit(config: Path | None, *, check_broker: bool = True, **flags: Any) -> Settings:
    """The settings, with the broker URLs and TLS files checked (unless the command never
    connects: `check_broker=False`); else one line, exit code 2."""
    from worker.brokererrors import check_broker_settings

    try:
        s = load_settings(config, **flags)
        if check_broker:
            check_broker_settings(s)
    except Exception as exc:
        raise BrokerFailure(f"bad configuration: {_one_line(exc)}") from None
    return s


def connect_or_exit(s: Settings) -> Connection:
    """The same connection builder as the worker's (failover, TLS, login method), connected:
    each URL tried once; if none answers, one line naming it and what to check."""
    global _url
    from worker.amqp import connect
    from worker.brokererrors import check_broker_settings, connect_each_node, describe, redact

    try:
        check_broker_settings(s)
    except ValueError as exc:
        raise BrokerFailure(f"bad configuration: {exc}") from None
    conn = connect(s)
    failed: list[tuple[str, str]] = []  # (url, what went wrong there)

    def on_failure(url: str, _node: str, exc: BaseException) -> None:
        global _url
        _url = url
        failed.append((url, describe(exc, url)))

    try:
        node = connect_each_node(conn, s.broker_urls, on_failure, reraise_as_library_errors=False)
    except Exception:
        conn.release()
        others = [redact(u) for u, _ in failed[:-1]]
        also = f" (also failed: {', '.join(others)})" if others else ""
        raise BrokerFailure(failed[-1][1] + also) from None
    _url = s.broker_urls[node]
    return conn


class BrokerGroup(click.Group):
    """A command group whose commands report a broker failure in one line, exit code 2, and
    a message no worker queue would receive as an error naming the host."""

    def invoke(self, ctx: click.Context) -> Any:
        from worker.brokererrors import BROKER_ERRORS, describe
        from worker.publish import NoWorkerQueue

        try:
            return super().invoke(ctx)
        except NoWorkerQueue as exc:
            raise click.ClickException(str(exc)) from None
        except BROKER_ERRORS as exc:
            if _url is None:  # not from a connection of ours
                raise
            raise BrokerFailure(describe(exc, _url)) from None
