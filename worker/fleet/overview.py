"""A host's status, and the fleet at a glance: operations per minute, failure rates, the
summary.

A host's status is computed when asked, by the monitor's rules (worker/monitor.py): `up`,
`late` (its last heartbeat older than LATE_FACTOR intervals), `down` (DOWN_MISSED heartbeats
missed), `offline` (it said so: `host.offline`), `unknown` (never heard from).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.fleet import store as st
from worker.fleet.paging import iso
from worker.monitor import DOWN_FACTOR, LATE_FACTOR

STATUSES = ("up", "late", "down", "offline", "unknown")


def status_expr(now: float) -> sa.ColumnElement[str]:
    h = st.hosts.c
    silent = sa.and_(h.status == "online", h.interval_s.is_not(None), h.last_seen.is_not(None))
    return sa.case(
        (sa.and_(silent, h.last_seen < now - DOWN_FACTOR * h.interval_s), "down"),
        (sa.and_(silent, h.last_seen < now - LATE_FACTOR * h.interval_s), "late"),
        (h.status == "online", "up"),
        (h.status == "offline", "offline"),
        else_="unknown",
    )


def host_status(row: dict[str, Any], now: float) -> str:
    """The same rule as `status_expr`, for a row in hand."""
    if row.get("status") == "online":
        interval, seen = row.get("interval_s"), row.get("last_seen")
        if interval and seen is not None:
            if seen < now - DOWN_FACTOR * interval:
                return "down"
            if seen < now - LATE_FACTOR * interval:
                return "late"
        return "up"
    return "offline" if row.get("status") == "offline" else "unknown"


# -- charts and the summary -----------------------------------------------------------------
def ops_per_minute(
    conn: Connection, *, host: str | None = None, minutes: int = 60, now: float | None = None
) -> list[dict[str, Any]]:
    """Operations finished (after or fail) and failed per minute, the last `minutes` minutes
    (the current one included), oldest first, every minute present."""
    now = time.time() if now is None else now
    last = int(now // 60)
    first = last - minutes + 1
    m = st.op_minutes.c
    sel = (
        sa.select(m.minute, sa.func.sum(m.ops), sa.func.sum(m.failed))
        .where(m.minute >= first, m.minute <= last)
        .group_by(m.minute)
    )
    sel = sel.where(m.host == (host or st.FLEET))
    got = {int(k): (int(a or 0), int(b or 0)) for k, a, b in conn.execute(sel)}
    return [
        {"minute": iso(k * 60.0), "ops": got.get(k, (0, 0))[0], "failed": got.get(k, (0, 0))[1]}
        for k in range(first, last + 1)
    ]


def failure_rate(
    conn: Connection, *, minutes: int = 60, now: float | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Per host, the last `minutes` minutes: operations, failures and their rate; the hosts
    with the most failures first."""
    now = time.time() if now is None else now
    first = int(now // 60) - minutes + 1
    m = st.op_minutes.c
    ops, failed = sa.func.sum(m.ops).label("ops"), sa.func.sum(m.failed).label("failed")
    sel = (
        sa.select(m.host, ops, failed)
        .where(m.minute >= first, m.host != st.FLEET)
        .group_by(m.host)
        .order_by(failed.desc(), ops.desc(), m.host)
    )
    if limit:
        sel = sel.limit(limit)
    return [
        {
            "host": h,
            "ops": int(o or 0),
            "failed": int(f or 0),
            "failure_rate": round(int(f or 0) / int(o), 4) if o else 0.0,
        }
        for h, o, f in conn.execute(sel)
    ]


def fleet_summary(conn: Connection, now: float | None = None, *, top: int = 20) -> dict[str, Any]:
    """The fleet at a glance: hosts by status, VMs by state (`unknown` on a down host),
    failures in the last hour, operations per minute, the `top` hosts by failures."""
    now = time.time() if now is None else now
    status = status_expr(now).label("status")
    by_status = dict.fromkeys(STATUSES, 0)
    for s, n in conn.execute(sa.select(status, sa.func.count()).group_by(status)):
        by_status[s] = int(n)
    v = st.vms.c
    # VMs by state; those of down hosts count as unknown
    by_state = {
        s: int(n) for s, n in conn.execute(sa.select(v.state, sa.func.count()).group_by(v.state))
    }
    down = sa.select(st.hosts.c.host).where(status_expr(now) == "down").scalar_subquery()
    q = sa.select(v.state, sa.func.count()).where(v.host.in_(down)).group_by(v.state)
    for s, n in conn.execute(q):
        by_state[s] -= int(n)
        by_state["unknown"] = by_state.get("unknown", 0) + int(n)
    by_state = {k: n for k, n in by_state.items() if n}
    series = ops_per_minute(conn, now=now)
    # from the per-minute counters: the last 60 minutes, the current one included
    failed_hour = sum(p["failed"] for p in series)
    h = st.hosts.c
    depth, dead = conn.execute(
        sa.select(
            sa.func.sum(sa.func.coalesce(h.broker_depth, h.queue_depth)), sa.func.sum(h.dead_depth)
        )
    ).one()
    return {
        "at": iso(now),
        "hosts": by_status | {"total": sum(by_status.values())},
        "vms": dict(sorted(by_state.items())),
        "vms_total": sum(by_state.values()),
        "failures_last_hour": int(failed_hour),
        "ops_last_hour": sum(p["ops"] for p in series),
        "ops_per_minute": series,
        "hosts_by_failures": failure_rate(conn, now=now, limit=top),
        "queue_depth_total": int(depth or 0),
        "dead_letters_total": int(dead or 0),
    }
