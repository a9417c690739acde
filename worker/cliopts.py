"""What the CLI commands share: the connection options, settings and the broker connection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from kombu import Connection

from worker.config import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

broker_option = click.option("--broker", help="broker URL (several separated by ';')")
config_option = click.option("--config", type=click.Path(path_type=Path), help="TOML config file")
prefix_option = click.option(
    "--prefix", help="name prefix of exchanges and queues (default: config, else vm)"
)


def connection_options(f: F) -> F:
    """--broker, --prefix and --config, for commands that read or publish on the broker."""
    return broker_option(prefix_option(config_option(f)))


def settings_or_exit(config: Path | None, **flags: Any) -> Settings:
    try:
        return load_settings(config, **flags)
    except Exception as exc:
        raise click.ClickException(f"bad configuration: {exc}") from None


def connect_or_exit(s: Settings) -> Connection:
    """The same connection builder as the worker's (failover, TLS, login method)."""
    from worker.amqp import connect

    try:
        return connect(s)
    except ValueError as exc:
        raise click.ClickException(f"bad broker configuration: {exc}") from None
