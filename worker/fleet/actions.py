"""What an operator may do from the fleet server: replay a request (from the ops log or from a
host's dead-letter queue) and drain a host. Both publish through the functions the CLI's
`vmworker replay` and `vmworker drain` use (worker/replay.py, worker/drain.py), on a broker
connection opened for the action; the server never holds one open for them."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import click

from worker.config import HOST_RE, Settings
from worker.history import LogMessage
from worker.topology import Topology


class ActionError(Exception):
    """The action could not be done; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _connect(s: Settings) -> Any:
    from worker.cliopts import connect_or_exit

    try:
        return connect_or_exit(s)
    except click.ClickException as exc:
        raise ActionError(502, exc.format_message()) from None


def replay(
    s: Settings,
    request_id: str,
    *,
    source: str = "log",
    host: str | None = None,
    logged: LogMessage | None = None,
    as_new: bool = True,
    to_host: str | None = None,
    dry_run: bool = True,
) -> dict[str, Any]:
    """Replay one request: `source` "log" (the message as the store keeps it from the ops
    log, `logged`; else the ops log read from its start) or "dead" (`host`'s dead-letter queue).
    A dry run sends nothing (and puts a dead letter back)."""
    from vmworker.client import Client
    from vmworker.replay import Planned, Selection
    from worker.publish import NoWorkerQueue, require_host_queue

    if source not in ("log", "dead"):
        raise ActionError(400, f"source must be log or dead, not {source!r}")
    for h in (host, to_host):
        if h is not None and not HOST_RE.match(h):
            raise ActionError(400, f"not a host id: {h!r}")
    if source == "dead" and not host:
        raise ActionError(400, "a replay from a dead-letter queue needs its host")
    topo = Topology.from_settings(s)
    with _connect(s) as conn:
        client = Client(settings=s, connection=conn)
        try:
            if logged is not None and source == "log":
                new_id = str(uuid.uuid4()) if as_new else request_id
                planned = [Planned(logged, new_id, to_host or logged.routing_key, "ops-log")]
                if not dry_run:
                    require_host_queue(conn, topo, planned[0].target)
                    client.send_replay(planned[0])  # confirmed
            else:
                planned = client.replay(
                    Selection(request_ids=(request_id,)),
                    from_dead=host if source == "dead" else None,
                    as_new=as_new,
                    to_host=to_host,
                    dry_run=dry_run,
                    idle=0.5,
                )
        except NoWorkerQueue as exc:
            raise ActionError(409, str(exc)) from None
        except click.ClickException as exc:
            raise ActionError(404, exc.format_message()) from None
        finally:
            client.close()
    if not planned:
        raise ActionError(404, f"request {request_id} is not in the {source} source")
    return {"dry_run": dry_run, "replays": [p.row() for p in planned]}


def drain(
    s: Settings,
    host: str,
    destinations: list[str],
    *,
    by_memory: bool = False,
    dry_run: bool = True,
    lookback: float | None = None,
    inventory_wait: float = 15.0,
) -> dict[str, Any]:
    """`vmworker drain HOST --to ...` without --wait: the plan, and (not a dry run) every
    migrate_vm published; the source worker runs them, their events tell the outcome."""
    from vmworker.client import Client
    from worker.drain import _body as migrate_body
    from worker.drain import _check_hosts, _plan, learn, watch_keys
    from worker.drainplan import DrainRun
    from worker.publish import NoWorkerQueue, require_host_queue

    dests = list(dict.fromkeys(destinations))
    for h in (host, *dests):
        if not HOST_RE.match(h):
            raise ActionError(400, f"not a host id: {h!r}")
    if not dests or host in dests:
        raise ActionError(400, "give destination hosts other than the drained one")
    topo = Topology.from_settings(s)
    drain_id = str(uuid.uuid4())
    with _connect(s) as conn:
        client = Client(settings=s, connection=conn)
        reader = client.watch(keys=watch_keys(host, dests))  # bound before the log is read
        try:
            back = s.inventory_interval + 600.0 if lookback is None else lookback
            inv = learn(conn, topo, reader, [host, *dests], lookback=back, wait=inventory_wait)
            try:
                _check_hosts(inv, host, dests)
                moves = _plan(inv, host, dests, by_memory)
            except click.ClickException as exc:
                raise ActionError(409, exc.format_message()) from None
            if not dry_run and moves:
                try:
                    for h in (host, *dests):
                        require_host_queue(conn, topo, h)
                except NoWorkerQueue as exc:
                    raise ActionError(409, str(exc)) from None
                run = DrainRun(moves, len(moves))
                for m in run.moves:
                    if m.destination is not None:
                        rid = client.submit(
                            host, migrate_body(m, {}), correlation_id=drain_id,
                            check_queue=False,
                        ).request_id  # fmt: skip
                        run.sent(m, rid, time.monotonic())
        finally:
            client.close()
    return {
        "host": host,
        "dry_run": dry_run,
        "correlation_id": None if dry_run else drain_id,
        "moves": [m.row() for m in moves],
    }


def logged_message(conn: Any, request_id: str) -> LogMessage | None:
    """The first copy of a request in the store's `ops_messages` (the ops log as ingested)."""
    import sqlalchemy as sa

    from worker.fleet.store import ops_messages as t

    query = sa.select(t).where(t.c.message_id == request_id).order_by(t.c.id).limit(1)
    row = conn.execute(query).mappings().first()
    if row is None:
        return None
    body = bytes(row["body"])
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    return LogMessage(
        row["stream_offset"],
        row["host"] or "",
        row["message_id"],
        row["correlation_id"],
        row["at"],
        dict(row["headers"] or {}),
        dict(row["properties"] or {}),
        body,
        doc if isinstance(doc, dict) else None,
    )
