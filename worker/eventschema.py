"""The JSON Schema (2020-12) of every event the worker publishes (`vmworker schema --events`):
the CloudEvents envelope, then `data` by kind and phase, each field typed (docs/protocol.md has
the same tables). An event whose `data` was cut to fit (`data.cut`, worker/bounds.py) may lack
fields that are otherwise required; every field it has keeps its type."""

from __future__ import annotations

from typing import Any

from worker.messages import JSON_SCHEMA_DIALECT
from worker.tracing import TRACEPARENT_PATTERN, TRACESTATE_MAX

EVENT_SCHEMA_ID = "urn:vmworker:schema:event:1"
# every timestamp of an event: RFC 3339, UTC, milliseconds (events.now_iso)
TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
UUID_LOWER = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_INT = {"type": "integer"}
_NINT = {"type": ["integer", "null"]}
_NUM = {"type": "number", "minimum": 0}
_BOOL = {"type": "boolean"}
_MIB = {"type": "integer", "minimum": 0}
_TIME = {"type": "string", "pattern": TIME_PATTERN}
_CUT = {"type": "array", "items": _STR, "maxItems": 20}
_VM = {
    "type": "object",
    "properties": {
        "uuid": {"type": ["string", "null"], "pattern": UUID_LOWER},
        "name": _NSTR,
    },
    "required": ["uuid", "name"],
    "additionalProperties": False,
}
_HOOK = {
    "type": "object",
    "properties": {
        "point": _STR,
        "name": _STR,
        "kind": _STR,
        "rc": _INT,
        "unexpected_rc": _BOOL,
        "duration_ms": _NUM,
        "sha256": _NSTR,
        "changed_xml": _BOOL,
        "stderr_tail": _STR,
        "stdout_tail": _STR,
        "refused": _NSTR,
        "timed_out": _BOOL,
        "discarded": _NSTR,
        "device": _STR,
    },
    "additionalProperties": False,
}
_ERROR = {
    "type": "object",
    "properties": {
        "code": _STR,
        "message": _STR,
        "source": {
            "enum": [
                "validation",
                "expired",
                "unauthorized",
                "hook",
                "libvirt",
                "timeout",
                "internal",
            ]
        },
        "libvirt_code": _NINT,
        "hook": _NSTR,
        "stderr": _STR,
        "libvirt_domain": _INT,
        "connection_lost": _BOOL,
        "field": _STR,
        "state": _STR,
        "allowed": {"type": "array", "items": _STR},
        "device": _STR,
        "destination_error": {"type": "object"},  # migrate_vm: the destination's own error
    },
    "required": ["code", "message", "source", "libvirt_code", "hook"],
    "additionalProperties": False,
}
_WORKER = {
    "type": "object",
    "properties": {"version": _STR, "pid": _INT, "started_at": _TIME, "uptime_s": _NUM},
    "required": ["version", "pid", "started_at", "uptime_s"],
    "additionalProperties": False,
}

# `data` of an operation's events: every field any phase may carry, and its type
_OP_FIELDS: dict[str, Any] = {
    "op": _STR,
    "phase": {"enum": ["before", "after", "fail"]},
    "host": _STR,
    "vm": _VM,
    "request_id": _NSTR,
    "correlation_id": _NSTR,
    "redelivered": _BOOL,
    "recovered": _BOOL,
    "replay_of": _STR,
    "attempt": {"type": "integer", "minimum": 0},
    "duration_ms": _NUM,
    "state": _STR,
    "noop": _BOOL,
    "hooks": {"type": "array", "items": _HOOK},
    "error": _ERROR,
    "duplicate": {"const": True},
    "original_event_id": _STR,
    "cut": _CUT,
    # what handlers learned (docs/protocol.md)
    "target": _STR,
    "mac": _STR,
    "forced": _BOOL,
    "memory_before_mib": _INT,
    "state_file": _STR,
    "state_file_removed": {"const": True},
    "state_file_kept": _STR,
    "graphics": {"type": "array", "items": _STR},
    "valid_to": {"type": ["string", "null"], "pattern": TIME_PATTERN},
    # a migration's (migrate_vm on the source; prepare_ and finish_incoming on the destination)
    "destination": _STR,
    "destination_state": _STR,
    "destination_told": _BOOL,
    "duration_migration_s": _NUM,
    "postcopy": _BOOL,
    "resumed_source": _BOOL,
    "waited_for_orphan_job": _BOOL,
    "cancel_requested": _BOOL,
    "source": _STR,
    "migration_request": _STR,
    "accepted_xml": _STR,
    "storage_pools": {"type": "array", "items": _STR},
}
_PROGRESS = {  # `data.progress` of `<host>.migrate_vm.progress`: libvirt's job statistics
    "type": "object",
    "properties": {
        k: _NUM
        for k in (
            "data_processed_bytes",
            "data_remaining_bytes",
            "data_total_bytes",
            "bandwidth_mib_s",
            "dirty_rate_pages_s",
            "iteration",
            "expected_downtime_ms",
            "percent",
        )
    },
    "additionalProperties": False,
}
_IDENTITY = ["op", "phase", "host", "vm", "request_id", "correlation_id"]
_BEFORE = [*_IDENTITY, "redelivered", "recovered"]
_TERMINAL = [*_IDENTITY, "redelivered", "attempt", "duration_ms", "state", "hooks"]
_AFTER = [*_TERMINAL, "noop"]


def _whole(required: list[str]) -> dict[str, Any]:
    """`required`, unless `data.cut` says the event was cut to fit."""
    return {"if": {"not": {"required": ["cut"]}}, "then": {"required": required}}


def _op_data(phase: str, required: list[str], *, error: bool) -> dict[str, Any]:
    fields = dict(_OP_FIELDS, phase={"const": phase})
    out: dict[str, Any] = {
        "type": "object",
        "properties": fields,
        "required": ["op", "phase", "host"],
        "additionalProperties": False,
        "allOf": [_whole(required)],
    }
    if error:
        out["allOf"].append(_whole(["error"]))
    else:
        out["not"] = {"required": ["error"]}
    return out


def _progress_data() -> dict[str, Any]:
    """`data` of `<host>.<op>.progress`: a running operation's news, never terminal."""
    fields = dict(_OP_FIELDS, phase={"const": "progress"}, progress=_PROGRESS)
    return {
        "type": "object",
        "properties": fields,
        "required": ["op", "phase", "host"],
        "additionalProperties": False,
        "not": {"required": ["error"]},
        "allOf": [_whole([*_IDENTITY, "progress"])],
    }


_STATE_DATA = {
    "type": "object",
    "properties": {
        "host": _STR,
        "vm": _VM,
        "state": _STR,
        "reason": _STR,
        "domain_state": _STR,
        "libvirt_event": {
            "type": "object",
            "properties": {"event": _INT, "detail": _INT},
            "additionalProperties": False,
        },
        "during_request": _STR,
        "cut": _CUT,
    },
    "required": ["host", "vm", "state"],
    "additionalProperties": False,
    "allOf": [_whole(["reason", "domain_state"])],
}
_MEMORY = {  # the node's, in MiB: what a drain places VMs by
    "type": "object",
    "properties": {"total_mib": _MIB, "free_mib": _MIB},
    "required": ["total_mib", "free_mib"],
    "additionalProperties": False,
}
_DIGEST = {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}
# `data` of host.heartbeat and host.online: liveness and counters, never the inventory
_BEAT = {
    "type": "object",
    "properties": {
        "host": _STR,
        "worker": _WORKER,
        "interval_s": _NUM,
        "inventory_digest": _DIGEST,
        "vms": {
            "type": ["object", "null"],  # null: libvirt did not answer
            "properties": {
                "total": {"type": "integer", "minimum": 0},
                "by_state": {"type": "object", "additionalProperties": _MIB},
            },
            "required": ["total", "by_state"],
            "additionalProperties": False,
        },
        "libvirt": {
            "type": "object",
            "properties": {"uri": _STR, "error": _STR},
            "required": ["uri"],
            "additionalProperties": False,
        },
        "memory": _MEMORY,
        "queue_depth": {"type": ["integer", "null"], "minimum": 0},
        "outbox": _NINT,
        "operations_in_flight": _NINT,
        "cut": _CUT,
    },
    "required": ["host"],
    "additionalProperties": False,
    "allOf": [
        _whole(
            [
                "worker",
                "interval_s",
                "inventory_digest",
                "vms",
                "libvirt",
                "queue_depth",
                "outbox",
                "operations_in_flight",
            ]
        )
    ],
}
# `data` of host.inventory: what runs and is installed, and what after_get_caps hooks add
_INVENTORY = {
    "type": "object",
    "properties": {
        "host": _STR,
        "worker": _WORKER,
        "reason": {"enum": ["online", "changed", "snapshot"]},
        "inventory_digest": _DIGEST,
        "libvirt": {
            "type": "object",
            "properties": {
                "uri": _STR,
                "version": _STR,
                "hypervisor": _STR,
                "hypervisor_version": _STR,
                "error": _STR,
            },
            "required": ["uri"],
            "additionalProperties": False,
        },
        "memory": _MEMORY,
        "domains": {
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "properties": {
                    "uuid": {"type": "string", "pattern": UUID_LOWER},
                    "name": _STR,
                    "state": _STR,
                    "persistent": _BOOL,
                    "memory_mib": _MIB,  # its maximum memory
                },
                "additionalProperties": False,
            },
        },
        "hooks": {"type": ["object", "null"]},
        "hooks_error": _STR,
        "cut": _CUT,
    },
    "required": ["host"],
    "additionalProperties": True,  # what an after_get_caps hook adds (any JSON)
    "allOf": [_whole(["worker", "reason", "inventory_digest", "libvirt", "domains", "hooks"])],
}
_OFFLINE = {
    "type": "object",
    "properties": {
        "host": _STR,
        "reason": _STR,
        "worker": _WORKER,
        "stopped_at": _TIME,
        "cut": _CUT,
    },
    "required": ["host"],
    "additionalProperties": False,
    "allOf": [_whole(["reason", "worker", "stopped_at"])],
}


def _kind(type_pattern: str, data: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "properties": {"type": {"pattern": type_pattern}, "data": data, **more},
        "required": ["type", "data"],
    }


def event_schema() -> dict[str, Any]:
    """The JSON Schema of one event (the body of a message on `<prefix>.events`)."""
    op = r"[a-z][a-z0-9_]*"
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": EVENT_SCHEMA_ID,
        "title": "vmworker event",
        "description": "A CloudEvents 1.0 structured event; docs/protocol.md, Events.",
        "type": "object",
        "properties": {
            "specversion": {"const": "1.0"},
            "id": _STR,
            "source": {"type": "string", "pattern": "^vmworker://[A-Za-z0-9_-]+$"},
            "type": {"type": "string", "pattern": r"^vmworker\.[a-z_]+\.[A-Za-z0-9_-]+$"},
            "subject": {"type": "string", "pattern": UUID_LOWER},
            "time": _TIME,
            "datacontenttype": {"const": "application/json"},
            "requestid": _STR,
            # CloudEvents distributed-tracing extension: W3C Trace Context (worker/tracing.py)
            "traceparent": {"type": "string", "pattern": TRACEPARENT_PATTERN},
            "tracestate": {"type": "string", "maxLength": TRACESTATE_MAX},
            "data": {"type": "object"},
        },
        "required": ["specversion", "id", "source", "type", "time", "datacontenttype", "data"],
        "additionalProperties": False,
        "oneOf": [
            _kind(rf"^vmworker\.{op}\.before$", _op_data("before", _BEFORE, error=False)),
            _kind(rf"^vmworker\.{op}\.after$", _op_data("after", _AFTER, error=False)),
            _kind(rf"^vmworker\.{op}\.fail$", _op_data("fail", _TERMINAL, error=True)),
            _kind(rf"^vmworker\.{op}\.progress$", _progress_data()),
            _kind(r"^vmworker\.state\.[A-Za-z0-9_-]+$", _STATE_DATA),
            _kind(r"^vmworker\.host\.(online|heartbeat)$", _BEAT),
            _kind(r"^vmworker\.host\.inventory$", _INVENTORY),
            _kind(r"^vmworker\.host\.offline$", _OFFLINE),
        ],
    }


__all__ = ["EVENT_SCHEMA_ID", "TIME_PATTERN", "event_schema"]
