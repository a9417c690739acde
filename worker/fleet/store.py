"""The fleet store: SQLAlchemy Core tables, one schema for SQLite (the embedded default) and
PostgreSQL (fleets, high availability).

Times are epoch seconds (floats): comparable, indexable and the same on both backends; the
queries turn them into RFC 3339 strings. What each table keeps:

- `hosts`: one row per host, current: liveness (`last_seen`, `interval_s`, `status` as the host
  said it: online/offline), the worker, libvirt, memory, inventory digest, hooks, counters of its
  last heartbeat and the depth of its queues as the broker last said.
- `vms`: one row per VM uuid: host, state, last operation and its result.
- `requests`: one row per request id: every phase folded in (published, before, progress,
  after/fail), hooks' and errors' text for searching (`text`), replays (`replay_of`).
- `events`: every event but heartbeats, whole (`body`), with the columns the filters use.
- `ops_messages`: every operation message of the ops log (body and headers, for replay).
- `dead_letters`: what the dead-letter queues hold now (refreshed from the broker).
- `heartbeats`: a bounded history per host, HEARTBEAT_HISTORY slots used as a ring.
- `op_minutes`: operations and failures per host and minute (the charts, without scanning).
- `offsets`: stream name -> last stored offset, written in the same transaction as the rows.
- `audit`: the actions taken through the fleet server (who, what, when).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

HEARTBEAT_HISTORY = 120  # heartbeats kept per host: an hour at the 30 s default
TEXT_MAX = 16_384  # characters of a row's search text

metadata = sa.MetaData()


def _not_null(col: str) -> dict[str, Any]:
    """A partial index's condition: only the rows where `col` has a value."""
    cond = sa.column(col).is_not(None)
    return {"sqlite_where": cond, "postgresql_where": cond}


# an autoincrementing 64-bit key: SQLite only autoincrements "INTEGER PRIMARY KEY"
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Time: sa.Double[float] = sa.Double()
Name = sa.String(255)

hosts = sa.Table(
    "hosts",
    metadata,
    sa.Column("host", Name, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, default="unknown"),  # online|offline|unknown
    sa.Column("first_seen", Time),
    sa.Column("last_seen", Time),  # its last online/heartbeat/inventory/offline event
    sa.Column("interval_s", sa.Double()),
    sa.Column("version", Name),
    sa.Column("pid", sa.Integer()),
    sa.Column("started_at", sa.String(40)),
    sa.Column("uptime_s", sa.Double()),
    sa.Column("stopped_at", sa.String(40)),
    sa.Column("libvirt", Json),
    sa.Column("hypervisor", Name),
    sa.Column("memory", Json),
    sa.Column("inventory_digest", Name),
    sa.Column("inventory_at", Time),
    sa.Column("domains_digest", sa.String(64)),  # ours, of the last domain list folded in
    sa.Column("vms_total", sa.Integer()),
    sa.Column("vms_by_state", Json),
    sa.Column("hooks", Json),
    sa.Column("hooks_error", sa.Text()),
    sa.Column("queue_depth", sa.Integer()),  # from its last heartbeat
    sa.Column("outbox", sa.Integer()),
    sa.Column("in_flight", sa.Integer()),
    sa.Column("broker_depth", sa.Integer()),  # from the broker (passive declare)
    sa.Column("dead_depth", sa.Integer()),
    sa.Column("depth_at", Time),
    sa.Column("hb_seq", sa.Integer(), nullable=False, default=0),
    sa.Column("extra", Json),  # what after_get_caps hooks added to the heartbeat
)

vms = sa.Table(
    "vms",
    metadata,
    sa.Column("uuid", sa.String(64), primary_key=True),
    sa.Column("name", Name, nullable=False, default=""),  # "" when not known
    sa.Column("host", Name, nullable=False, default=""),
    sa.Column("state", sa.String(32), nullable=False, default="unknown"),
    sa.Column("state_at", Time, nullable=False, default=0.0),
    sa.Column("changed_at", Time, nullable=False, default=0.0),
    sa.Column("last_change", Name),
    sa.Column("last_op", sa.String(64)),
    sa.Column("request_id", Name),
    sa.Column("result", sa.String(16)),  # running | ok | failed | duplicate
    sa.Column("op_at", Time, nullable=False, default=0.0),
    sa.Column("error", sa.Text()),
    sa.Column("persistent", sa.Boolean()),
    sa.Column("updated_at", Time, nullable=False, default=0.0),
    sa.Index("ix_vms_host_name", "host", "name", "uuid"),
    sa.Index("ix_vms_state_host", "state", "host"),  # the state filter; the summary's counts
)

requests = sa.Table(
    "requests",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("request_id", Name, nullable=False, unique=True),
    sa.Column("at", Time, nullable=False),  # first seen (published or started): the sort key
    sa.Column("host", Name),
    sa.Column("vm_uuid", sa.String(64)),
    sa.Column("vm_name", Name),
    sa.Column("op", sa.String(64)),
    sa.Column("phase", sa.String(16)),  # published | before | progress | after | fail
    sa.Column("result", sa.String(16)),  # queued | running | ok | failed
    sa.Column("correlation_id", Name),
    sa.Column("replay_of", Name),
    sa.Column("destination", Name),
    sa.Column("attempt", sa.Integer()),
    sa.Column("duration_ms", sa.Double()),
    sa.Column("state", sa.String(32)),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_source", sa.String(32)),
    sa.Column("error_message", sa.Text()),
    sa.Column("hook", Name),
    sa.Column("duplicates", sa.Integer(), nullable=False, default=0),
    sa.Column("published_at", Time),
    sa.Column("started_at", Time),
    sa.Column("finished_at", Time),
    sa.Column("updated_at", Time),
    sa.Column("text", sa.Text()),  # error message, stderr, hooks' output tails: for searching
    sa.Index("ix_requests_at", "at", "id"),
    sa.Index("ix_requests_host_at", "host", "at"),
    sa.Index("ix_requests_vm_at", "vm_uuid", "at"),
    # partial: most rows have none (and the planner would take an index of NULLs for useless)
    sa.Index("ix_requests_error_at", "error_code", "at", **_not_null("error_code")),
    sa.Index("ix_requests_op_at", "op", "at"),
    sa.Index("ix_requests_replay_of", "replay_of", **_not_null("replay_of")),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("stream_offset", sa.BigInteger()),
    sa.Column("event_id", Name),
    sa.Column("at", Time, nullable=False),
    sa.Column("type", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),  # op | state | host
    sa.Column("host", Name),
    sa.Column("vm_uuid", sa.String(64)),
    sa.Column("request_id", Name),
    sa.Column("during_request", Name),
    sa.Column("op", sa.String(64)),
    sa.Column("phase", sa.String(16)),
    sa.Column("error_code", sa.String(64)),
    sa.Column("replay_of", Name),
    sa.Column("duplicate", sa.Boolean(), nullable=False, default=False),
    sa.Column("traceparent", sa.String(64)),
    sa.Column("text", sa.Text()),
    sa.Column("body", Json, nullable=False),
    sa.Index("ix_events_at", "at", "id"),
    sa.Index("ix_events_host_at", "host", "at"),
    sa.Index("ix_events_vm_at", "vm_uuid", "at"),
    sa.Index("ix_events_request", "request_id"),
    sa.Index("ix_events_during", "during_request", **_not_null("during_request")),
    sa.Index("ix_events_phase_at", "phase", "at"),
)

ops_messages = sa.Table(
    "ops_messages",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("stream_offset", sa.BigInteger()),
    sa.Column("at", Time),  # its AMQP timestamp (whole seconds)
    sa.Column("host", Name),  # the routing key: the host it was sent to
    sa.Column("message_id", Name),
    sa.Column("correlation_id", Name),
    sa.Column("op", sa.String(64)),
    sa.Column("vm_uuid", sa.String(64)),
    sa.Column("replay_of", Name),
    sa.Column("headers", Json),
    sa.Column("properties", Json),
    sa.Column("body", sa.LargeBinary(), nullable=False),
    sa.Index("ix_ops_messages_message_id", "message_id"),
    sa.Index("ix_ops_messages_replay_of", "replay_of", **_not_null("replay_of")),
    sa.Index("ix_ops_messages_vm", "vm_uuid"),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("host", Name, nullable=False),
    sa.Column("position", sa.Integer(), nullable=False),  # in its queue, 0 the oldest
    sa.Column("message_id", Name),
    sa.Column("correlation_id", Name),
    sa.Column("op", sa.String(64)),
    sa.Column("vm_uuid", sa.String(64)),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_source", sa.String(32)),
    sa.Column("reason", sa.Text()),
    sa.Column("published_at", Time),
    sa.Column("headers", Json),
    sa.Column("properties", Json),
    sa.Column("body", sa.LargeBinary(), nullable=False),
    sa.Column("seen_at", Time, nullable=False),
    sa.Index("ix_dead_letters_host", "host", "position"),
)

heartbeats = sa.Table(
    "heartbeats",
    metadata,
    sa.Column("host", Name, primary_key=True),
    sa.Column("slot", sa.Integer(), primary_key=True),  # seq % HEARTBEAT_HISTORY
    sa.Column("seq", sa.Integer(), nullable=False),
    sa.Column("at", Time, nullable=False),
    sa.Column("type", sa.String(16), nullable=False),  # online | heartbeat
    sa.Column("queue_depth", sa.Integer()),
    sa.Column("outbox", sa.Integer()),
    sa.Column("in_flight", sa.Integer()),
    sa.Column("vms_total", sa.Integer()),
    sa.Column("vms_by_state", Json),
    sa.Column("memory", Json),
    sa.Column("uptime_s", sa.Double()),
)

op_minutes = sa.Table(
    "op_minutes",
    metadata,
    sa.Column("host", Name, primary_key=True),
    sa.Column("minute", sa.Integer(), primary_key=True),  # epoch seconds // 60
    sa.Column("ops", sa.Integer(), nullable=False, default=0),  # terminal outcomes
    sa.Column("failed", sa.Integer(), nullable=False, default=0),
    sa.Index("ix_op_minutes_minute", "minute"),
)

offsets = sa.Table(
    "offsets",
    metadata,
    sa.Column("stream", Name, primary_key=True),
    sa.Column("stream_offset", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", Time, nullable=False),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("at", Time, nullable=False),
    sa.Column("who", Name, nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", Name),
    sa.Column("params", Json),
    sa.Column("result", Json),
    sa.Column("dry_run", sa.Boolean(), nullable=False, default=False),
    sa.Index("ix_audit_at", "at", "id"),
)


def default_url(state_dir: Path | str) -> str:
    return f"sqlite:///{Path(state_dir) / 'fleet.db'}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the ingest's writes
    cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; a crash loses no commit
    cur.execute("PRAGMA busy_timeout=30000")  # the web side and the ingest share the file
    cur.execute("PRAGMA cache_size=-65536")  # 64 MiB
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.close()


def open_store(url: str, *, create: bool = True, **engine_args: Any) -> Engine:
    """An engine on the store at `url` (`sqlite:///path` or `postgresql+psycopg://...`), its
    tables created if missing."""
    u = sa.engine.make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, **engine_args)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine_args.setdefault("pool_pre_ping", True)
        engine = sa.create_engine(url, **engine_args)
    if create:
        metadata.create_all(engine)
    return engine


def upsert(
    conn: Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    *,
    add: Sequence[str] = (),
) -> None:
    """Insert `rows`, or update the row with the same `keys`; the columns in `add` are added
    to the stored value instead of replacing it. Every row must have the same columns."""
    if not rows:
        return
    name = conn.dialect.name
    ins: Any
    if name == "sqlite":
        ins = sqlite.insert(table)
    elif name == "postgresql":
        ins = postgresql.insert(table)
    else:  # pragma: no cover - the two backends the store supports
        raise ValueError(f"unsupported database {name}")
    cols = [c for c in rows[0] if c not in keys]
    set_ = {c: (table.c[c] + ins.excluded[c]) if c in add else ins.excluded[c] for c in cols}
    stmt = (
        ins.on_conflict_do_update(index_elements=list(keys), set_=set_)
        if set_
        else (ins.on_conflict_do_nothing(index_elements=list(keys)))
    )
    conn.execute(stmt, list(rows))


def bulk_insert(conn: Connection, table: sa.Table, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert many rows (executemany, in chunks); the store's bulk path. Returns how many."""
    n, chunk = 0, []
    for r in rows:
        chunk.append(r)
        if len(chunk) >= 5000:
            conn.execute(table.insert(), chunk)
            n, chunk = n + len(chunk), []
    if chunk:
        conn.execute(table.insert(), chunk)
        n += len(chunk)
    return n


def get_offset(conn: Connection, stream: str) -> int | None:
    return conn.execute(
        sa.select(offsets.c.stream_offset).where(offsets.c.stream == stream)
    ).scalar_one_or_none()


def set_offset(conn: Connection, stream: str, offset: int) -> None:
    upsert(
        conn,
        offsets,
        [{"stream": stream, "stream_offset": offset, "updated_at": time.time()}],
        ["stream"],
    )


def record_audit(
    conn: Connection,
    *,
    who: str,
    action: str,
    target: str | None = None,
    params: Mapping[str, Any] | None = None,
    result: Any = None,
    dry_run: bool = False,
    at: float | None = None,
) -> int:
    """Write one audit row (an action taken through the fleet server); returns its id."""
    row = conn.execute(
        audit.insert().returning(audit.c.id),
        {
            "at": time.time() if at is None else at,
            "who": who,
            "action": action,
            "target": target,
            "params": dict(params or {}),
            "result": result,
            "dry_run": dry_run,
        },
    )
    return int(row.scalar_one())
