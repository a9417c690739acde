"""Folding stream messages into the fleet store, a batch at a time.

`apply_batch(conn, items)` is the one code path: the ingest calls it with each batch it read,
the tests with recorded or made-up events. A batch reads the rows it touches once (hosts, VMs,
requests by key), folds every item into them in memory, in stream order, and writes them back:
a handful of statements per batch, not per event. Heartbeats update their host's row and the
bounded `heartbeats` ring; they are not kept as `events` rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy.engine import Connection

from worker.fleet import store as st
from worker.fleet.batch import Item, StreamEvent, _Batch, _host_of
from worker.history import LogMessage
from worker.monitor import _STATE_OF_EVENT, parse_time
from worker.subscribe import vouched

_HOST_KEYS = {
    "host",
    "worker",
    "interval_s",
    "libvirt",
    "domains",
    "hooks",
    "hooks_error",
    "queue_depth",
    "outbox",
    "operations_in_flight",
    "cut",
    "inventory_digest",
    "vms",
    "memory",
    "reason",
    "stopped_at",
}


def _text(*parts: Any) -> str | None:
    out = "\n".join(str(p) for p in parts if p)
    return out[: st.TEXT_MAX] if out else None


def _hooks_text(hooks: Any) -> list[str]:
    out = []
    for h in hooks or []:
        if isinstance(h, dict):
            out += [h.get("stderr_tail") or "", h.get("stdout_tail") or ""]
    return out


class _Seen(NamedTuple):
    """What one event says: its host, its VM's uuid and `vm` data, its `data`, its time."""

    host: str | None
    uuid: str | None
    vm_data: dict[str, Any]
    data: dict[str, Any]
    at: float


def _error_of(data: dict[str, Any]) -> dict[str, Any]:
    error = data.get("error")
    return error if isinstance(error, dict) else {}


def _search_text(data: dict[str, Any], error: dict[str, Any]) -> str | None:
    """What a `text` filter searches: the error, its stderr and the hooks' output."""
    return _text(_error_text(error), error.get("stderr"), *_hooks_text(data.get("hooks")))


def _error_text(error: dict[str, Any]) -> str | None:
    if not error:
        return None
    return f"{error.get('source', '?')}/{error.get('code', '?')}: {error.get('message', '')}"


def _failing_hook(data: dict[str, Any], error: dict[str, Any]) -> str | None:
    if error.get("hook"):
        return str(error["hook"])
    bad = [
        h for h in data.get("hooks") or [] if isinstance(h, dict) and h.get("rc") not in (0, None)
    ]
    return str(bad[0].get("name")) if bad else None


def _domains_digest(domains: list[Any]) -> str:
    key = sorted(
        (str(d.get("uuid")), str(d.get("name")), str(d.get("state")))
        for d in domains
        if isinstance(d, dict)
    )
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


def apply_batch(conn: Connection, items: Sequence[Item]) -> list[dict[str, Any]]:
    """Fold `items` (events of the events stream, messages of the ops log), in order, into the
    store through `conn` (the caller owns the transaction). Returns what happened, for live
    updates: one dict per event (`id` its row id; None for a heartbeat, which has no row)."""
    norm = [StreamEvent(None, None, it) if isinstance(it, dict) else it for it in items]
    b = _Batch(conn)
    b.load(norm)
    for it in norm:
        if isinstance(it, LogMessage):
            _op_message(b, it)
        else:
            _event(b, it)
    b.write()
    return b.live


# -- the ops log ----------------------------------------------------------------------------
def _op_message(b: _Batch, m: LogMessage) -> None:
    at = m.timestamp
    b.op_rows.append(
        {
            "stream_offset": m.offset,
            "at": at,
            "host": m.routing_key or None,
            "message_id": m.message_id,
            "correlation_id": m.correlation_id,
            "op": m.op,
            "vm_uuid": m.vm_uuid,
            "replay_of": m.replay_of,
            "headers": _jsonable({k: v for k, v in m.headers.items() if k != "x-stream-offset"}),
            "properties": _jsonable(m.properties),
            "body": m.body,
        }
    )
    if not m.message_id:
        return
    r = b.request(m.message_id, at or 0.0)
    if at and not r["published_at"]:
        r["published_at"] = at
    r["host"] = r["host"] or m.routing_key or None
    r["op"] = r["op"] or m.op
    r["vm_uuid"] = r["vm_uuid"] or m.vm_uuid
    r["correlation_id"] = r["correlation_id"] or m.correlation_id
    r["replay_of"] = r["replay_of"] or m.replay_of
    if isinstance(m.doc, dict) and isinstance(m.doc.get("vm"), dict) and not r["vm_name"]:
        r["vm_name"] = m.doc["vm"].get("name")
    if r["phase"] is None:
        r["phase"], r["result"] = "published", "queued"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# -- the events stream ----------------------------------------------------------------------
def _event(b: _Batch, it: StreamEvent) -> None:
    ev = it.event
    data = ev.get("data")
    words = str(ev.get("type", "")).split(".")
    if len(words) < 3 or words[0] != "vmworker" or not isinstance(data, dict):
        return
    if not vouched(ev, it.routing_key):
        return  # a body claiming another host than the one that published it is forged
    at = parse_time(ev.get("time")) or 0.0
    host = _host_of(ev, it.routing_key)
    if words[1] == "host":
        if host:
            _host_event(b, words[2], host, ev, data, at, it.offset)
        return
    vm_data = data.get("vm") if isinstance(data.get("vm"), dict) else {}
    uuid = (vm_data or {}).get("uuid") or ev.get("subject")
    if host:
        b.host(host, at)
    seen = _Seen(host, uuid, vm_data or {}, data, at)
    if words[1] == "state":
        _state_event(b, words[2], seen)
        _store_event(b, it, "state", seen, words)
    elif data.get("phase") in ("before", "after", "fail", "progress"):
        _op_event(b, ev, seen)
        _store_event(b, it, "op", seen, words)


def _store_event(b: _Batch, it: StreamEvent, kind: str, seen: _Seen, words: list[str]) -> None:
    ev = it.event
    host, uuid, _, data, at = seen
    error = _error_of(data)
    row = {
        "stream_offset": it.offset,
        "event_id": ev.get("id"),
        "at": at,
        "type": str(ev.get("type"))[:128],
        "kind": kind,
        "host": host,
        "vm_uuid": uuid,
        "request_id": ev.get("requestid") or data.get("request_id"),
        "during_request": data.get("during_request"),
        "op": data.get("op") if kind == "op" else None,
        "phase": data.get("phase") if kind == "op" else words[2],
        "error_code": error.get("code"),
        "replay_of": data.get("replay_of"),
        "duplicate": bool(data.get("duplicate")),
        "traceparent": ev.get("traceparent"),
        "text": _search_text(data, error),
        "body": ev,
    }
    b.event_rows.append(row)
    b.live.append(row)


def _host_event(
    b: _Batch,
    kind: str,
    host: str,
    ev: dict[str, Any],
    data: dict[str, Any],
    at: float,
    offset: int | None,
) -> None:
    row = b.host(host, at)
    if kind in ("online", "offline", "inventory"):
        seen = _Seen(host, None, {}, data, at)
        _store_event(b, StreamEvent(offset, None, ev), "host", seen, ["", "", kind])
    if row["last_seen"] is not None and at < row["last_seen"]:
        return  # older news, seen late: the row already says something newer
    row["last_seen"] = at
    worker = data.get("worker") if isinstance(data.get("worker"), dict) else {}
    if worker:
        row["version"] = worker.get("version", row["version"])
        row["pid"] = worker.get("pid", row["pid"])
        row["started_at"] = worker.get("started_at", row["started_at"])
        row["uptime_s"] = worker.get("uptime_s", row["uptime_s"])
    if kind == "offline":
        row["status"] = "offline"
        row["stopped_at"] = data.get("stopped_at")
        return
    if kind in ("online", "heartbeat"):
        row["status"] = "online"
        row["stopped_at"] = None
        row["interval_s"] = data.get("interval_s", row["interval_s"])
        row["queue_depth"] = data.get("queue_depth")
        row["outbox"] = data.get("outbox")
        row["in_flight"] = data.get("operations_in_flight")
        extra = {k: v for k, v in data.items() if k not in _HOST_KEYS}
        row["extra"] = extra or None
    elif row["status"] == "unknown":
        row["status"] = "online"
    lv = data.get("libvirt")
    if isinstance(lv, dict):
        row["libvirt"] = lv
        if lv.get("hypervisor"):
            row["hypervisor"] = f"{lv['hypervisor']} {lv.get('hypervisor_version', '')}".strip()
    if isinstance(data.get("memory"), dict):
        row["memory"] = data["memory"]
    if data.get("inventory_digest"):
        row["inventory_digest"] = data["inventory_digest"]
    if "hooks" in data:
        if isinstance(data["hooks"], dict):
            row["hooks"], row["hooks_error"] = data["hooks"], None
        elif data.get("hooks_error"):
            row["hooks_error"] = data["hooks_error"]
    counts = data.get("vms") if isinstance(data.get("vms"), dict) else None
    if counts is not None:
        row["vms_total"] = counts.get("total")
        row["vms_by_state"] = counts.get("by_state")
    domains = data.get("domains")
    if isinstance(domains, list):
        if kind == "inventory" or "hooks" in data:
            row["inventory_at"] = at
        _domains(b, row, host, domains, data, at)
    if kind in ("online", "heartbeat"):
        seq = int(row["hb_seq"] or 0) + 1
        row["hb_seq"] = seq
        beat = {
            "host": host,
            "slot": seq % st.HEARTBEAT_HISTORY,
            "seq": seq,
            "at": at,
            "type": kind,
            "queue_depth": row["queue_depth"],
            "outbox": row["outbox"],
            "in_flight": row["in_flight"],
            "vms_total": row["vms_total"],
            "vms_by_state": row["vms_by_state"],
            "memory": data.get("memory") if isinstance(data.get("memory"), dict) else None,
            "uptime_s": worker.get("uptime_s") if worker else None,
        }
        b.beats[(host, beat["slot"])] = beat
        if kind == "heartbeat":
            b.live.append(
                {
                    "id": None,
                    "type": ev.get("type"),
                    "kind": "host",
                    "host": host,
                    "at": at,
                    "vm_uuid": None,
                    "request_id": None,
                    "phase": kind,
                }
            )


def _domains(
    b: _Batch,
    row: dict[str, Any],
    host: str,
    domains: list[Any],
    data: dict[str, Any],
    at: float,
) -> None:
    """A host's whole domain list: each VM's state; VMs of this host not in it are gone."""
    by_state: dict[str, int] = {}
    for d in domains:
        if isinstance(d, dict):
            s = str(d.get("state") or "unknown")
            by_state[s] = by_state.get(s, 0) + 1
    if not isinstance(data.get("vms"), dict):
        row["vms_total"], row["vms_by_state"] = len(domains), by_state
    digest = _domains_digest(domains)
    if digest == row["domains_digest"]:
        return  # the same list as the last one folded in: nothing to tell the VM rows
    row["domains_digest"] = digest
    b.load_host_vms(host)
    listed = set()
    for d in domains:
        if not isinstance(d, dict) or not d.get("uuid"):
            continue
        vm = b.vm(str(d["uuid"]), d.get("name"), host)
        if d.get("persistent") is not None:
            vm["persistent"] = bool(d["persistent"])
        listed.add(vm["uuid"])
        _observe(vm, str(d.get("state") or "unknown"), at)
    if "data.domains" in (data.get("cut") or []):
        return  # the list was cut to fit the event: a VM missing from it may still be there
    for vm in list(b.vms.values()):
        if vm["host"] == host and vm["uuid"] not in listed and vm["state"] != "undefined":
            b.dirty_vms.add(vm["uuid"])
            _observe(vm, "undefined", at)


def _observe(vm: dict[str, Any], state: str, at: float) -> None:
    """News about a VM's state at time `at`; older news than what the row has is ignored."""
    if at < (vm["state_at"] or 0.0):
        return
    if state != vm["state"]:
        vm["changed_at"] = at
    vm["state"], vm["state_at"] = state, at
    vm["updated_at"] = max(vm["updated_at"] or 0.0, at)


def _state_event(b: _Batch, word: str, seen: _Seen) -> None:
    host, uuid, vm_data, data, at = seen
    if not uuid:
        return
    vm = b.vm(str(uuid), vm_data.get("name"), host)
    if at >= (vm["state_at"] or 0.0):
        vm["last_change"] = f"{word} ({data.get('reason', '?')})"[:255]
    _observe(vm, data.get("domain_state") or _STATE_OF_EVENT.get(word, "unknown"), at)


def _op_event(b: _Batch, ev: dict[str, Any], seen: _Seen) -> None:
    host, uuid, vm_data, data, at = seen
    phase = data["phase"]
    error = _error_of(data)
    duplicate = bool(data.get("duplicate"))
    terminal = phase in ("after", "fail")
    if terminal and not duplicate and host:
        for key in (host, st.FLEET):  # the host's counters and the whole fleet's
            m = b.minutes.setdefault((key, int(at // 60)), [0, 0])
            m[0] += 1
            m[1] += phase == "fail"
    rid = ev.get("requestid") or data.get("request_id")
    if rid:
        _request(b, str(rid), seen, error, duplicate)
    if not uuid:
        return  # a message too broken to name its VM: only in the events and failures
    op = data.get("op")
    if op == "prepare_incoming" or (op == "finish_incoming" and phase != "after"):
        return  # a destination's part of a migration: the VM is still the source's
    vm = b.vm(str(uuid), vm_data.get("name"), host)
    if duplicate:
        vm["result"], vm["request_id"] = "duplicate", rid
        return  # a re-sent old outcome: says nothing new about the VM's state
    if phase == "progress" or at < (vm["op_at"] or 0.0):
        return
    vm["last_op"], vm["request_id"], vm["op_at"] = data.get("op"), rid, at
    vm["updated_at"] = max(vm["updated_at"] or 0.0, at)
    if phase == "before":
        vm["result"], vm["error"] = "running", None
        return
    vm["result"] = "ok" if phase == "after" else "failed"
    vm["error"] = _error_text(error) if phase == "fail" else None
    state = data.get("state")
    if op == "migrate_vm" and phase == "after" and data.get("destination"):
        vm["host"] = str(data["destination"])  # it runs there now
        state = data.get("destination_state") or state
    if state and state != "unknown":
        _observe(vm, str(state), at)


def _request(b: _Batch, rid: str, seen: _Seen, error: dict[str, Any], duplicate: bool) -> None:
    host, uuid, vm_data, data, at = seen
    r = b.request(rid, at)
    phase = data["phase"]
    r["host"] = host or r["host"]
    r["vm_uuid"] = uuid or r["vm_uuid"]
    r["vm_name"] = vm_data.get("name") or r["vm_name"]
    r["op"] = data.get("op") or r["op"]
    r["correlation_id"] = data.get("correlation_id") or r["correlation_id"]
    r["replay_of"] = data.get("replay_of") or r["replay_of"]
    r["destination"] = data.get("destination") or r["destination"]
    if duplicate:
        r["duplicates"] = int(r["duplicates"] or 0) + 1
        if r["finished_at"] is not None:
            return  # the outcome is known: a re-sent copy adds nothing
    if phase == "before":
        r["started_at"] = at if r["started_at"] is None else min(r["started_at"], at)
        if r["finished_at"] is None:
            r["phase"], r["result"] = "before", "running"
        return
    if phase == "progress":
        if r["finished_at"] is None:
            r["phase"], r["result"] = "progress", "running"
        return
    if r["finished_at"] is not None and at < r["finished_at"]:
        return  # an older outcome (a request replayed with its own id): the newer one stands
    r["phase"] = phase
    r["result"] = "ok" if phase == "after" else "failed"
    r["finished_at"] = at
    r["attempt"] = data.get("attempt")
    r["duration_ms"] = data.get("duration_ms")
    r["state"] = data.get("state")
    r["error_code"] = error.get("code")
    r["error_source"] = error.get("source")
    r["error_message"] = error.get("message")
    r["hook"] = _failing_hook(data, error) if phase == "fail" else None
    r["text"] = _search_text(data, error)
