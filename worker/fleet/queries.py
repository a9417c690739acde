"""The questions asked of the fleet store: each takes a SQLAlchemy `Connection` and returns
plain dicts and lists, ready for JSON (times as RFC 3339 strings in UTC).

Lists page by keyset (worker/fleet/paging.py); a host's status is computed when asked
(worker/fleet/overview.py, with the charts and the fleet summary, re-exported here).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypedDict, Unpack

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.fleet import store as st
from worker.fleet.overview import STATUSES as STATUSES
from worker.fleet.overview import failure_rate as failure_rate
from worker.fleet.overview import fleet_summary as fleet_summary
from worker.fleet.overview import host_status, status_expr
from worker.fleet.overview import ops_per_minute as ops_per_minute
from worker.fleet.paging import DEFAULT_LIMIT as DEFAULT_LIMIT
from worker.fleet.paging import MAX_LIMIT as MAX_LIMIT
from worker.fleet.paging import BadCursor as BadCursor
from worker.fleet.paging import _asc_page, _desc_page, iso
from worker.fleet.paging import _encode as _encode
from worker.messages import redact_body

HISTORY_MAX = 2000  # events of one VM's or request's history


# -- hosts ----------------------------------------------------------------------------------
def _host(row: Any, now: float) -> dict[str, Any]:
    r = dict(row)
    hooks = r.get("hooks")
    return {
        "host": r["host"],
        "status": host_status(r, now),
        "said": r["status"],
        "last_seen": iso(r["last_seen"]),
        "silent_s": round(now - r["last_seen"], 3) if r["last_seen"] is not None else None,
        "first_seen": iso(r["first_seen"]),
        "interval_s": r["interval_s"],
        "version": r["version"],
        "pid": r["pid"],
        "started_at": r["started_at"],
        "uptime_s": r["uptime_s"],
        "stopped_at": r["stopped_at"],
        "libvirt": r["libvirt"],
        "hypervisor": r["hypervisor"],
        "memory": r["memory"],
        "inventory_digest": r["inventory_digest"],
        "inventory_at": iso(r["inventory_at"]),
        "vms_total": r["vms_total"],
        "vms_by_state": r["vms_by_state"],
        "hooks_count": sum(len(v) for v in hooks.values() if isinstance(v, list))
        if isinstance(hooks, dict)
        else None,
        "hooks_error": r["hooks_error"],
        "queue_depth": r["broker_depth"] if r["broker_depth"] is not None else r["queue_depth"],
        "queue_depth_heartbeat": r["queue_depth"],
        "queue_depth_broker": r["broker_depth"],
        "dead_letters": r["dead_depth"],
        "depth_at": iso(r["depth_at"]),
        "outbox": r["outbox"],
        "operations_in_flight": r["in_flight"],
        "extra": r["extra"],
    }


def list_hosts(
    conn: Connection,
    *,
    status: str | None = None,
    q: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
    now: float | None = None,
    offline_after: float | None = None,
) -> dict[str, Any]:
    """Hosts by name; `status` one of STATUSES; `q` a part of the name; `offline_after`
    (seconds): leave out hosts offline (or down) for longer than that."""
    now = time.time() if now is None else now
    h = st.hosts.c
    sel = sa.select(st.hosts)
    if status:
        sel = sel.where(status_expr(now) == status)
    if q:
        sel = sel.where(h.host.icontains(q, autoescape=True))
    if offline_after is not None:
        sel = sel.where(
            sa.or_(
                status_expr(now).in_(("up", "late", "unknown")),
                h.last_seen >= now - offline_after,
            )
        )
    rows, nxt = _asc_page(conn, sel, [h.host], limit, cursor)
    return {"items": [_host(r, now) for r in rows], "next": nxt}


def get_host(
    conn: Connection, host: str, *, now: float | None = None, vms_limit: int = 500
) -> dict[str, Any] | None:
    """One host: its row, hooks (whole), VMs, recent requests, heartbeat history, dead letters."""
    now = time.time() if now is None else now
    row = conn.execute(sa.select(st.hosts).where(st.hosts.c.host == host)).mappings().first()
    if row is None:
        return None
    out: dict[str, Any] = _host(row, now)
    out["hooks"] = row["hooks"]
    down = out["status"] == "down"
    out["vms"] = [
        _vm(v, down)
        for v in conn.execute(
            sa.select(st.vms)
            .where(st.vms.c.host == host)
            .order_by(st.vms.c.name, st.vms.c.uuid)
            .limit(vms_limit)
        ).mappings()
    ]
    out["recent_requests"] = list_requests(conn, host=host, limit=20)["items"]
    beats = conn.execute(
        sa.select(st.heartbeats).where(st.heartbeats.c.host == host).order_by(st.heartbeats.c.seq)
    ).mappings()
    out["heartbeats"] = [
        {
            "seq": b["seq"],
            "at": iso(b["at"]),
            "type": b["type"],
            "queue_depth": b["queue_depth"],
            "outbox": b["outbox"],
            "operations_in_flight": b["in_flight"],
            "vms_total": b["vms_total"],
            "vms_by_state": b["vms_by_state"],
            "memory": b["memory"],
            "uptime_s": b["uptime_s"],
        }
        for b in beats
    ]
    out["dead_letter_items"] = list_dead_letters(conn, host=host)
    out["ops_per_minute"] = ops_per_minute(conn, host=host, now=now)
    return out


# -- VMs ------------------------------------------------------------------------------------
def _vm(row: Any, host_down: bool = False) -> dict[str, Any]:
    return {
        "uuid": row["uuid"],
        "name": row["name"] or None,
        "host": row["host"] or None,
        "state": "unknown" if host_down else row["state"],
        "state_reported": row["state"],
        "state_at": iso(row["state_at"] or None),
        "changed_at": iso(row["changed_at"] or None),
        "last_change": row["last_change"],
        "last_op": row["last_op"],
        "request_id": row["request_id"],
        "result": row["result"],
        "op_at": iso(row["op_at"] or None),
        "error": row["error"],
        "persistent": row["persistent"],
    }


def list_vms(
    conn: Connection,
    *,
    host: str | None = None,
    state: str | None = None,
    q: str | None = None,
    result: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """VMs by host, name, uuid; `state` as last reported; `q` a part of the name or uuid."""
    now = time.time() if now is None else now
    v = st.vms.c
    down = status_expr(now) == "down"
    sel = sa.select(st.vms, sa.func.coalesce(down, False).label("host_down")).outerjoin(
        st.hosts, st.hosts.c.host == v.host
    )
    if host:
        sel = sel.where(v.host == host)
    if state:
        sel = sel.where(v.state == state)
    if result:
        sel = sel.where(v.result == result)
    if q:
        sel = sel.where(
            sa.or_(v.name.icontains(q, autoescape=True), v.uuid.icontains(q, autoescape=True))
        )
    rows, nxt = _asc_page(conn, sel, [v.host, v.name, v.uuid], limit, cursor)
    return {"items": [_vm(r, bool(r["host_down"])) for r in rows], "next": nxt}


def get_vm(
    conn: Connection, uuid: str, *, limit: int = HISTORY_MAX, now: float | None = None
) -> dict[str, Any] | None:
    """One VM's whole history: its row, every request on it and every event about it (state
    and operation events, hooks and their output in `event`), oldest first."""
    row = conn.execute(sa.select(st.vms).where(st.vms.c.uuid == uuid)).mappings().first()
    if row is None:
        return None
    host = None
    if row["host"]:
        hr = conn.execute(sa.select(st.hosts).where(st.hosts.c.host == row["host"])).mappings()
        host = hr.first()
    out = _vm(row, host is not None and host_status(dict(host), now or time.time()) == "down")
    r = st.requests.c
    out["requests"] = [
        _request(x)
        for x in conn.execute(
            sa.select(st.requests).where(r.vm_uuid == uuid).order_by(r.at, r.id).limit(limit)
        ).mappings()
    ]
    e = st.events.c
    newest = (
        sa.select(st.events).where(e.vm_uuid == uuid).order_by(e.at.desc(), e.id.desc())
    ).limit(limit)
    out["events"] = [_event(x) for x in reversed(list(conn.execute(newest).mappings()))]
    return out


# -- requests -------------------------------------------------------------------------------
def _request(row: Any) -> dict[str, Any]:
    return {
        "request_id": row["request_id"],
        "at": iso(row["at"]),
        "host": row["host"],
        "vm": row["vm_uuid"],
        "vm_name": row["vm_name"],
        "op": row["op"],
        "phase": row["phase"],
        "result": row["result"],
        "correlation_id": row["correlation_id"],
        "replay_of": row["replay_of"],
        "destination": row["destination"],
        "attempt": row["attempt"],
        "duration_ms": row["duration_ms"],
        "state": row["state"],
        "error_code": row["error_code"],
        "error_source": row["error_source"],
        "error_message": row["error_message"],
        "hook": row["hook"],
        "duplicates": row["duplicates"],
        "published_at": iso(row["published_at"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
    }


class Paging(TypedDict, total=False):
    """A list's page: `limit` rows after the `cursor` (the previous page's `next`)."""

    limit: int | None
    cursor: str | None


class Filters(Paging, total=False):
    """What `list_requests` and `list_events` share: filters (a falsy one is not applied;
    `since`/`until` epoch seconds, `text` a part of the errors and hooks' output) and paging."""

    host: str | None
    vm: str | None
    op: str | None
    phase: str | None
    error_code: str | None
    since: float | None
    until: float | None
    text: str | None


def _newest(
    conn: Connection,
    table: sa.Table,
    shape: Callable[[Any], dict[str, Any]],
    f: Filters,
    **equal: str | None,
) -> dict[str, Any]:
    """One page of `table`'s rows newest first, as `shape` makes them: those that pass the
    filters `f` and have each column named in `equal` equal to its value (a falsy one: any)."""
    if unknown := f.keys() - Filters.__optional_keys__:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
    c = table.c
    equal = {
        "host": f.get("host"),
        "vm_uuid": f.get("vm"),
        "op": f.get("op"),
        "phase": f.get("phase"),
        "error_code": f.get("error_code"),
        **equal,
    }
    where = [c[col] == value for col, value in equal.items() if value]
    since, until, text = f.get("since"), f.get("until"), f.get("text")
    if since is not None:
        where.append(c.at >= since)
    if until is not None:
        where.append(c.at < until)
    if text:
        where.append(c.text.icontains(text, autoescape=True))
    sel = sa.select(table).where(*where)
    rows, nxt = _desc_page(conn, sel, c.at, c.id, f.get("limit"), f.get("cursor"))
    return {"items": [shape(x) for x in rows], "next": nxt}


def list_requests(
    conn: Connection,
    *,
    result: str | None = None,
    replay_of: str | None = None,
    **f: Unpack[Filters],
) -> dict[str, Any]:
    """Requests newest first. `phase` is the request's latest (published, before, progress,
    after, fail); `since`/`until` epoch seconds; `text` searches errors and hooks' output."""
    return _newest(conn, st.requests, _request, f, result=result, replay_of=replay_of)


def _message(row: Any) -> dict[str, Any]:
    body: Any
    try:
        doc = json.loads(row["body"])
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        body = redact_body(doc)
    else:
        text = bytes(row["body"]).decode("utf-8", "replace")
        body = "(not a JSON object: not shown)" if "password" in text else text
    return {
        "kind": "message",
        "at": iso(row["at"]),
        "host": row["host"],
        "request_id": row["message_id"],
        "correlation_id": row["correlation_id"],
        "op": row["op"],
        "vm": row["vm_uuid"],
        "replay_of": row["replay_of"],
        "headers": row["headers"],
        "body": body,
    }


def get_request(
    conn: Connection, request_id: str, *, limit: int = HISTORY_MAX
) -> dict[str, Any] | None:
    """One request: its row, the messages that carried it (and its replays), every event of
    it and of its replays, state events during it (hooks and errors in `event`), and its
    replays' rows; oldest first."""
    r = st.requests.c
    row = conn.execute(sa.select(st.requests).where(r.request_id == request_id)).mappings().first()
    replays = list(
        conn.execute(
            sa.select(st.requests).where(r.replay_of == request_id).order_by(r.at, r.id)
        ).mappings()
    )
    ids = [request_id, *(x["request_id"] for x in replays)]
    o = st.ops_messages.c
    msgs = list(
        conn.execute(
            sa.select(st.ops_messages).where(o.message_id.in_(ids)).order_by(o.id).limit(limit)
        ).mappings()
    )
    # one query per index (an OR of two columns would scan the table)
    e = st.events.c
    found: dict[int, Any] = {}
    for col in (e.request_id, e.during_request):
        sel = sa.select(st.events).where(col.in_(ids)).limit(limit)  # sorted below
        for x in conn.execute(sel).mappings():
            found[x["id"]] = x
    evs = sorted(found.values(), key=lambda x: (x["at"], x["id"]))[:limit]
    if row is None and not msgs and not evs:
        return None
    out: dict[str, Any] = _request(row) if row is not None else {"request_id": request_id}
    out["messages"] = [_message(m) for m in msgs]
    out["events"] = [_event(x) for x in evs]
    out["replays"] = [_request(x) for x in replays]
    return out


# -- events ---------------------------------------------------------------------------------
def _event(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "at": iso(row["at"]),
        "type": row["type"],
        "kind": row["kind"],
        "host": row["host"],
        "vm": row["vm_uuid"],
        "request_id": row["request_id"],
        "during_request": row["during_request"],
        "op": row["op"],
        "phase": row["phase"],
        "error_code": row["error_code"],
        "replay_of": row["replay_of"],
        "duplicate": row["duplicate"],
        "traceparent": row["traceparent"],
        "event": row["body"],
    }


def list_events(
    conn: Connection,
    *,
    request_id: str | None = None,
    kind: str | None = None,
    type: str | None = None,
    **f: Unpack[Filters],
) -> dict[str, Any]:
    """Stored events newest first (heartbeats are not stored as events). `phase` is an
    operation's phase or a state event's word; `kind` op | state | host."""
    return _newest(conn, st.events, _event, f, request_id=request_id, kind=kind, type=type)


def _failure(row: Any) -> dict[str, Any]:
    ev = row["body"] or {}
    data = ev.get("data") or {}
    error = data.get("error") if isinstance(data.get("error"), dict) else {}
    error = error or {}
    stderr, hook = error.get("stderr"), error.get("hook")
    bad = [
        h for h in data.get("hooks") or [] if isinstance(h, dict) and h.get("rc") not in (0, None)
    ]
    if bad:
        hook = hook or bad[0].get("name")
        if not stderr:  # a failing after-hook or fail-hook: its own tail
            stderr = "\n".join(h.get("stderr_tail") or "" for h in bad).strip() or None
    vm = data.get("vm") if isinstance(data.get("vm"), dict) else {}
    return {
        "id": row["id"],
        "at": iso(row["at"]),
        "host": row["host"],
        "vm": row["vm_uuid"],
        "vm_name": (vm or {}).get("name"),
        "op": row["op"],
        "request_id": row["request_id"],
        "replay_of": row["replay_of"],
        "error_code": error.get("code"),
        "error_source": error.get("source"),
        "error_message": error.get("message"),
        "hook": hook,
        "stderr": stderr,
    }


def failures(
    conn: Connection,
    *,
    since: float | None = None,
    host: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Failed operations (`fail` events, re-sent copies left out), newest first."""
    e = st.events.c
    sel = sa.select(st.events).where(e.phase == "fail", e.kind == "op", e.duplicate.is_(False))
    if since is not None:
        sel = sel.where(e.at >= since)
    if host:
        sel = sel.where(e.host == host)
    rows, nxt = _desc_page(conn, sel, e.at, e.id, limit, cursor)
    return {"items": [_failure(x) for x in rows], "next": nxt}


def list_dead_letters(conn: Connection, *, host: str | None = None) -> list[dict[str, Any]]:
    """What the dead-letter queues held when last read, oldest first per host."""
    d = st.dead_letters.c
    sel = sa.select(st.dead_letters).order_by(d.host, d.position)
    if host:
        sel = sel.where(d.host == host)
    out = []
    for row in conn.execute(sel).mappings():
        m = _message(dict(row) | {"at": row["published_at"], "replay_of": None})
        m.update(
            kind="dead_letter",
            position=row["position"],
            error_code=row["error_code"],
            error_source=row["error_source"],
            reason=row["reason"],
            seen_at=iso(row["seen_at"]),
        )
        out.append(m)
    return out
