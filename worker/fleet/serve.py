"""`vmworker fleet serve`: the ingest thread (following the event and ops log streams into the
store) and the HTTP server (API, live events, web UI) in one process. See docs/fleet.md."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path
from typing import Any

import click
import structlog

from worker.cliopts import connection_options, settings_or_exit
from worker.config import Settings


def database_url(s: Settings) -> str:
    """`fleet.database_url`, else SQLite under the state directory."""
    return s.fleet.database_url or f"sqlite:///{Path(s.state_dir) / 'fleet.db'}"


def is_loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind == "localhost"


@click.group()
def fleet() -> None:
    """The fleet server: an indexed store of every host's events, its HTTP API and web UI."""


@fleet.command()
@connection_options
@click.option("--database-url", help="SQLAlchemy URL of the store (default: SQLite in state dir)")
@click.option("--bind", help="address to listen on (default 127.0.0.1)")
@click.option("--port", type=int, help="port to listen on (default 8470)")
@click.option("--state-dir", type=click.Path(path_type=Path), help="where the SQLite store lives")
@click.option(
    "--ingest/--no-ingest",
    default=True,
    show_default=True,
    help="follow the streams into the store (--no-ingest: serve a store another process fills)",
)
def serve(
    broker: str | None,
    prefix: str | None,
    config: Path | None,
    database_url: str | None,
    bind: str | None,
    port: int | None,
    state_dir: Path | None,
    ingest: bool,
) -> None:
    """Follow the streams into the store and serve the API and the web UI."""
    import uvicorn

    from worker import logs
    from worker.fleet.app import create_app
    from worker.fleet.live import Broadcaster
    from worker.fleet.store import open_store

    s = settings_or_exit(config, broker=broker, prefix=prefix, state_dir=state_dir)
    over = {"database_url": database_url, "bind": bind, "port": port}
    s.fleet = s.fleet.model_copy(update={k: v for k, v in over.items() if v is not None})
    logs.configure(s.log_level)
    log = structlog.get_logger("fleet")
    url = globals()["database_url"](s)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = open_store(url)
    live = Broadcaster()
    stop = threading.Event()
    thread = None
    if ingest:
        thread = threading.Thread(
            target=_ingest, args=(engine, s, live, stop), name="fleet-ingest", daemon=True
        )
        thread.start()
    if not is_loopback(s.fleet.bind):
        log.warning(
            "fleet.listening_beyond_loopback",
            bind=s.fleet.bind,
            note="reads need no token: put it behind an authenticating proxy",
        )
    if not s.fleet.token:
        log.info("fleet.actions_disabled", reason="no fleet.token configured")
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(engine, s, broadcaster=live),
            host=s.fleet.bind,
            port=s.fleet.port,
            log_level="warning",
            access_log=False,
        )
    )
    log.info("fleet.serving", url=f"http://{s.fleet.bind}:{s.fleet.port}/", store=engine.url)
    try:
        server.run()
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=15)
        engine.dispose()


def _ingest(engine: Any, s: Settings, live: Any, stop: threading.Event) -> None:
    from worker.fleet.ingest import Ingest

    Ingest(engine, s, on_commit=live.publish).run(stop)
