"""Events and ops log messages as the streams carry them (docs/protocol.md), made up for the
fleet store's tests."""

from __future__ import annotations

import json
import uuid
from typing import Any

from worker.fleet.queries import iso
from worker.history import LogMessage


def _ev(host: str, type_: str, at: float, data: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": f"vmworker://{host}",
        "type": f"vmworker.{type_}",
        "time": iso(at),
        "datacontenttype": "application/json",
        **top,
        "data": {"host": host, **data},
    }


def worker_info(at: float) -> dict[str, Any]:
    return {"version": "0.1.0", "pid": 4242, "started_at": iso(at), "uptime_s": 1.0}


def online(host: str, at: float, domains: list[dict[str, Any]] | None = None, **kw: Any) -> dict:
    return _ev(
        host,
        "host.online",
        at,
        {
            "worker": worker_info(at),
            "interval_s": 30.0,
            "libvirt": {"uri": "test:///default", "version": "9.0.0", "hypervisor": "Test"},
            "domains": domains or [],
            "hooks": {"before_vm_start": [{"name": "50_a", "sha256": "ab", "kind": "script"}]},
            "queue_depth": 0,
            "outbox": 0,
            "operations_in_flight": 0,
            **kw,
        },
    )


def heartbeat(host: str, at: float, *, slim: bool = False, **kw: Any) -> dict[str, Any]:
    """The heartbeat: with `domains` and `hooks` (the old shape) or `slim` (counters and the
    inventory's digest only)."""
    data: dict[str, Any] = {
        "worker": worker_info(at),
        "interval_s": 30.0,
        "queue_depth": 0,
        "outbox": 0,
        "operations_in_flight": 0,
    }
    if slim:
        data |= {"inventory_digest": "d1", "vms": {"total": 0, "by_state": {}}, "memory": {}}
    else:
        data |= {"libvirt": {"uri": "test:///default"}, "domains": [], "hooks": {}}
    return _ev(host, "host.heartbeat", at, data | kw)


def inventory(host: str, at: float, domains: list[dict[str, Any]], **kw: Any) -> dict:
    return _ev(
        host,
        "host.inventory",
        at,
        {
            "reason": "changed",
            "libvirt": {"uri": "test:///default", "version": "9.0.0"},
            "domains": domains,
            "hooks": {"before_vm_start": []},
            "memory": {"total_mib": 4096},
            "inventory_digest": "d2",
            **kw,
        },
    )


def offline(host: str, at: float) -> dict[str, Any]:
    return _ev(
        host,
        "host.offline",
        at,
        {"reason": "stopped", "worker": worker_info(at), "stopped_at": iso(at)},
    )


def domain(vm: str, name: str, state: str = "running") -> dict[str, Any]:
    return {"uuid": vm, "name": name, "state": state, "persistent": True}


def op(
    host: str,
    op_: str,
    phase: str,
    at: float,
    vm: str,
    rid: str,
    *,
    name: str | None = "web",
    state: str = "running",
    error: dict[str, Any] | None = None,
    hooks: list[dict[str, Any]] | None = None,
    **data: Any,
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "op": op_,
        "phase": phase,
        "vm": {"uuid": vm, "name": name},
        "request_id": rid,
        "correlation_id": None,
        "redelivered": False,
    }
    if phase == "before":
        d["recovered"] = False
    if phase in ("after", "fail"):
        d |= {"attempt": 1, "duration_ms": 12.5, "state": state, "hooks": hooks or []}
    if phase == "after":
        d["noop"] = False
    if phase == "fail":
        err = error or {"code": "bad_state", "source": "libvirt", "message": "no"}
        d["error"] = {"libvirt_code": None, "hook": None} | err
    return _ev(host, f"{op_}.{phase}", at, d | data, subject=vm, requestid=rid)


def state(host: str, at: float, vm: str, word: str, domain_state: str, **kw: Any) -> dict:
    return _ev(
        host,
        f"state.{word}",
        at,
        {
            "vm": {"uuid": vm, "name": "web"},
            "state": word,
            "reason": "booted",
            "domain_state": domain_state,
            **kw,
        },
        subject=vm,
    )


def message(
    host: str,
    op_: str,
    at: float,
    vm: str,
    rid: str,
    *,
    replay_of: str | None = None,
    params: dict[str, Any] | None = None,
    offset: int | None = None,
) -> LogMessage:
    doc: dict[str, Any] = {"version": 1, "op": op_, "vm": {"uuid": vm, "name": "web"}}
    if params:
        doc["params"] = params
    headers = {"x-replay-of": replay_of} if replay_of else {}
    return LogMessage(
        offset,
        host,
        rid,
        None,
        float(int(at)),
        headers,
        {"message_id": rid, "content_type": "application/json"},
        json.dumps(doc).encode(),
        doc,
    )
