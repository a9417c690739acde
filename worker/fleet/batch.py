"""A batch of the fleet store's fold: the rows it touches, read once and written back once.

`_Batch.load` reads the hosts, VMs and requests a batch of items names (by key, `_CHUNK` at a
time); the fold (worker/fleet/fold.py) changes them in memory; `_Batch.write` inserts the new
rows and updates the changed ones in a handful of statements.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.fleet import store as st
from worker.history import LogMessage

_CHUNK = 500  # keys per IN (...) when reading the rows a batch touches
# what the broker says of a host's queues: written by the ingest's poller, never by a batch
_NOT_OURS = ("broker_depth", "dead_depth", "depth_at")


@dataclass
class StreamEvent:
    """One message of the events stream: its offset, routing key and decoded body."""

    offset: int | None
    routing_key: str | None
    event: dict[str, Any]


Item = StreamEvent | LogMessage | dict[str, Any]


def _host_of(ev: dict[str, Any], routing_key: str | None) -> str | None:
    data = ev.get("data") if isinstance(ev.get("data"), dict) else {}
    if data and data.get("host"):
        return str(data["host"])
    src = str(ev.get("source", ""))
    if src.startswith("vmworker://"):
        return src.split("//", 1)[1]
    return routing_key.split(".", 1)[0] if routing_key else None


@dataclass
class _Batch:
    conn: Connection
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    new_hosts: set[str] = field(default_factory=set)
    new_vms: set[str] = field(default_factory=set)
    new_requests: set[str] = field(default_factory=set)
    dirty_hosts: set[str] = field(default_factory=set)
    dirty_vms: set[str] = field(default_factory=set)
    dirty_requests: set[str] = field(default_factory=set)
    host_vms_loaded: set[str] = field(default_factory=set)
    event_rows: list[dict[str, Any]] = field(default_factory=list)
    op_rows: list[dict[str, Any]] = field(default_factory=list)
    beats: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    minutes: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    live: list[dict[str, Any]] = field(default_factory=list)  # what on_commit gets

    # -- reading what the batch touches ---------------------------------------------------
    def load(self, items: Sequence[StreamEvent | LogMessage]) -> None:
        host_keys, vm_keys, req_keys = set(), set(), set()
        for it in items:
            if isinstance(it, LogMessage):
                if it.message_id:
                    req_keys.add(it.message_id)
                if it.routing_key:
                    host_keys.add(it.routing_key)
                continue
            ev = it.event
            data: dict[str, Any] = ev["data"] if isinstance(ev.get("data"), dict) else {}
            host = _host_of(ev, it.routing_key)
            if host:
                host_keys.add(host)
            vm = data.get("vm") if isinstance(data.get("vm"), dict) else {}
            uuid = (vm or {}).get("uuid") or ev.get("subject")
            if uuid:
                vm_keys.add(str(uuid))
            rid = ev.get("requestid") or data.get("request_id")
            if rid:
                req_keys.add(str(rid))
        self._read(st.hosts, st.hosts.c.host, host_keys, self.hosts)
        self._read(st.vms, st.vms.c.uuid, vm_keys, self.vms)
        self._read(st.requests, st.requests.c.request_id, req_keys, self.requests)

    def _read(
        self, table: sa.Table, key: Any, keys: Iterable[str], into: dict[str, dict[str, Any]]
    ) -> None:
        keys = sorted(k for k in keys if k not in into)
        for i in range(0, len(keys), _CHUNK):
            part = keys[i : i + _CHUNK]
            for row in self.conn.execute(sa.select(table).where(key.in_(part))).mappings():
                into[row[key.name]] = dict(row)

    def load_host_vms(self, host: str) -> None:
        if host in self.host_vms_loaded:
            return
        self.host_vms_loaded.add(host)
        q = sa.select(st.vms).where(st.vms.c.host == host)
        for row in self.conn.execute(q).mappings():
            self.vms.setdefault(row["uuid"], dict(row))

    # -- rows -------------------------------------------------------------------------------
    def host(self, name: str, at: float) -> dict[str, Any]:
        row = self.hosts.get(name)
        if row is None:
            row = self.hosts[name] = {c.name: None for c in st.hosts.columns} | {
                "host": name,
                "status": "unknown",
                "first_seen": at,
                "hb_seq": 0,
            }
            self.new_hosts.add(name)
        self.dirty_hosts.add(name)
        return row

    def vm(self, uuid: str, name: str | None, host: str | None) -> dict[str, Any]:
        row = self.vms.get(uuid)
        if row is None:
            row = self.vms[uuid] = {c.name: None for c in st.vms.columns} | {
                "uuid": uuid,
                "name": "",  # never NULL: the list's sort key (host, name, uuid)
                "host": "",
                "state": "unknown",
                "state_at": 0.0,
                "changed_at": 0.0,
                "op_at": 0.0,
                "updated_at": 0.0,
            }
            self.new_vms.add(uuid)
        if name:
            row["name"] = name
        if host:
            row["host"] = host
        self.dirty_vms.add(uuid)
        return row

    def request(self, rid: str, at: float) -> dict[str, Any]:
        row = self.requests.get(rid)
        if row is None:
            row = self.requests[rid] = {c.name: None for c in st.requests.columns} | {
                "request_id": rid,
                "at": at,
                "duplicates": 0,
            }
            del row["id"]
            self.new_requests.add(rid)
        row["at"] = min(row["at"], at)
        row["updated_at"] = max(row["updated_at"] or 0.0, at)
        self.dirty_requests.add(rid)
        return row

    # -- writing ------------------------------------------------------------------------------
    def write(self) -> None:
        c = self.conn
        self._write(st.hosts, "host", self.hosts, self.new_hosts, self.dirty_hosts)
        self._write(st.vms, "uuid", self.vms, self.new_vms, self.dirty_vms)
        self._write(
            st.requests, "request_id", self.requests, self.new_requests, self.dirty_requests
        )
        if self.event_rows:
            stmt = st.events.insert().returning(st.events.c.id, sort_by_parameter_order=True)
            ids = [r[0] for r in c.execute(stmt, self.event_rows)]
            for row, rid in zip(self.event_rows, ids, strict=True):
                row["id"] = rid
        if self.op_rows:
            c.execute(st.ops_messages.insert(), self.op_rows)
        st.upsert(c, st.heartbeats, list(self.beats.values()), ["host", "slot"])
        rows = [
            {"host": h, "minute": m, "ops": v[0], "failed": v[1]}
            for (h, m), v in self.minutes.items()
        ]
        st.upsert(c, st.op_minutes, rows, ["host", "minute"], add=("ops", "failed"))

    def _write(
        self,
        table: sa.Table,
        key: str,
        rows: dict[str, dict[str, Any]],
        new: set[str],
        dirty: set[str],
    ) -> None:
        if new:
            self.conn.execute(table.insert(), [rows[k] for k in sorted(new)])
        changed = sorted(dirty - new)
        if changed:
            cols = [c.name for c in table.columns if c.name not in (key, "id", *_NOT_OURS)]
            stmt = (
                table.update()
                .where(table.c[key] == sa.bindparam("_key"))
                .values({c: sa.bindparam(c) for c in cols})
            )
            self.conn.execute(stmt, [{"_key": k, **{c: rows[k][c] for c in cols}} for k in changed])
