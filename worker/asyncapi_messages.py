"""The messages of the AsyncAPI document (worker/asyncapi.py), its `components.messages`: the
operation messages with the properties and headers the worker reads, the events (one message per
kind, from worker/eventschema.py) and the dead letters, each payload a draft-07 schema
(worker/asyncapi_schema.py)."""

from __future__ import annotations

from typing import Any

from handlers.operations import OPERATIONS
from worker import events
from worker.asyncapi_schema import (
    SchemaConversionError,
    event_message_name,
    to_draft07,
)
from worker.eventschema import event_schema
from worker.messages import HOST_CHECKS, OP_MODELS, message_schema

AMQP_BINDING = "0.3.0"
DRAFT_07 = "application/schema+json;version=draft-07"
TRACEPARENT = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
PEER_OPS = ("prepare_incoming", "finish_incoming")
ANY_CONTENT = " Its content type is the original's (`content_type` property), often none."


def ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(path)}


def op_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "AMQP headers (the headers table) the worker reads; any other header is"
        " kept (a dead letter carries it).",
        "properties": {
            "x-deadline": {
                "description": "Optional. Past it, the worker does not run the message: `fail`,"
                " `expired`. An ISO 8601 time (UTC if it names no zone) or an AMQP timestamp"
                " (field type `T`, seconds since the epoch); anything else fails as"
                " `validation/bad_deadline`.",
                "anyOf": [{"type": "string"}, {"type": "integer"}],
                "examples": ["2026-11-22T04:20:00+00:00"],
            },
            "traceparent": {
                "type": "string",
                "pattern": TRACEPARENT,
                "description": "Optional. W3C Trace Context: the caller's span; every event of"
                " the request carries the trace on.",
            },
            "tracestate": {
                "type": "string",
                "description": "Optional. W3C Trace Context: vendor state, with `traceparent`.",
            },
            "x-replay-of": {
                "type": "string",
                "description": "Set by `vmworker replay --as-new`: the request id this message"
                " replays (events carry it as `data.replay_of`).",
            },
            "x-replayed-at": {
                "type": "string",
                "description": "Set by `vmworker replay`: when (ISO 8601).",
            },
            "compression": {
                "type": "string",
                "description": "kombu's body compression (`application/x-gzip`, ...); a body"
                " that cannot be undone fails as `validation/undecodable`.",
            },
        },
        "additionalProperties": True,
    }


OP_PROPERTIES: dict[str, Any] = {
    "type": "object",
    "description": "The AMQP basic properties (not headers) of an operation message: AsyncAPI"
    " has no place for them, so they are given here as a JSON Schema.",
    "properties": {
        "message_id": {
            "type": "string",
            "minLength": 1,
            "description": "Required: the request id, the idempotency key"
            " (`validation/no_message_id` without it).",
        },
        "correlation_id": {
            "type": "string",
            "description": "Optional; copied into every event of the request.",
        },
        "content_type": {"const": "application/json"},
        "delivery_mode": {"const": 2, "description": "persistent"},
        "user_id": {
            "type": "string",
            "description": "The publishing user (RabbitMQ checks it against the connection);"
            " with `allowed_publishers` set, anything else fails as `unauthorized`.",
        },
        "timestamp": {"type": "integer", "description": "Not read; kept in a dead letter."},
        "reply_to": {"type": "string", "description": "Not read; kept in a dead letter."},
        "priority": {"type": "integer", "description": "Not read; kept in a dead letter."},
        "expiration": {
            "type": "string",
            "description": "Not read; a dead letter keeps it as `x-original-expiration`.",
        },
        "type": {"type": "string", "description": "Not read; kept in a dead letter."},
        "app_id": {"type": "string", "description": "Not read; kept in a dead letter."},
    },
    "required": ["message_id"],
}


def operation_messages(schemas: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for op in sorted(OP_MODELS):
        schema = message_schema(op)
        payload = to_draft07(schema, schemas)
        title = payload.get("title", op)
        if title in schemas and schemas[title] != payload:
            raise SchemaConversionError(f"two different schemas named {title!r}")
        schemas[title] = payload
        declared = OPERATIONS[op]
        chains = ", ".join(chain(c, declared.point) for c in declared.chains)
        summary = f"Hook point `{declared.point}` (chains: {chains})." if chains else "No hooks."
        if op in PEER_OPS:
            summary += " Sent by a migration's source worker, never by a control plane."
        if declared.control:
            summary += " A control operation: it runs at once, not behind the VM's queue."
        out[op] = {
            "name": op,
            "title": f"operation {op}",
            "summary": summary,
            "description": "Published to the operations exchange with the host id as routing"
            f" key (docs/protocol.md, Operation messages). {HOST_CHECKS}",
            "contentType": "application/json",
            "correlationId": ref("components", "correlationIds", "request"),
            "headers": ref("components", "schemas", "OperationHeaders"),
            "payload": {"schemaFormat": DRAFT_07, "schema": ref("components", "schemas", title)},
            "x-amqp-properties": ref("components", "schemas", "OperationProperties"),
        }
    return out


def chain(chain: str, point: str) -> str:
    """("after_fail", "vm_start") -> after_vm_start_fail, as docs/hooks.md names chains."""
    when, _, fail = chain.partition("_")
    return f"{when}_{point}" + (f"_{fail}" if fail else "")


def envelope() -> dict[str, Any]:
    """The CloudEvents 1.0 envelope every event has: `event_schema()` without its kinds."""
    env = to_draft07(event_schema(), {})
    env.pop("oneOf")
    env["title"] = "CloudEvents 1.0 envelope"
    return env


def event_kind_messages(kinds: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for kind in kinds:
        words = kind["words"]
        name = event_message_name(words)
        branch = {
            "properties": {"type": {"pattern": kind["type"]}, "data": kind["data"]},
            "required": ["type", "data"],
        }
        out[name] = {
            "name": name,
            "title": "event <host>." + ".".join(words),
            "summary": f"CloudEvents type vmworker.{'.'.join(words)} (docs/protocol.md, Events).",
            "contentType": events.CONTENT_TYPE,
            "correlationId": ref("components", "correlationIds", "event"),
            "payload": {
                "schemaFormat": DRAFT_07,
                "schema": {"allOf": [ref("components", "schemas", "CloudEvent"), branch]},
            },
            "bindings": {"amqp": {"contentEncoding": "utf-8", "bindingVersion": AMQP_BINDING}},
            "x-amqp-properties": {
                "type": "object",
                "properties": {
                    "message_id": {"type": "string", "description": "the event's `id`"},
                    "correlation_id": {
                        "type": "string",
                        "description": "the request's `correlation_id` (`data.correlation_id`)",
                    },
                    "content_type": {"const": events.CONTENT_TYPE},
                    "content_encoding": {"const": "utf-8"},
                    "delivery_mode": {"const": 2},
                },
                "required": ["message_id", "content_type", "delivery_mode"],
            },
        }
    return out


def dead_letter_messages() -> dict[str, Any]:
    reason = {
        "x-vmworker-error-code": {"type": "string", "description": "the `error.code`"},
        "x-vmworker-error-source": {"type": "string", "description": "the `error.source`"},
        "x-vmworker-reason": {
            "type": "string",
            "maxLength": 1000,
            "description": "the error message",
        },
        "x-original-user-id": {
            "type": "string",
            "description": "the publisher's `user_id` (empty if none)",
        },
        "x-original-expiration": {
            "type": "string",
            "description": "the publisher's `expiration`, if it set one",
        },
    }
    body = {
        "description": "The original body, byte for byte (a refused message need not be JSON;"
        " a body the worker decompressed is kept uncompressed)."
    }
    common = (
        " The body, every AMQP property the publisher set (`user_id` and `expiration` as"
        " headers) and every header it set (docs/protocol.md, Dead letters)."
    )
    return {
        "dead_letter": {
            "name": "dead_letter",
            "title": "dead letter (refused by the worker)",
            "summary": "An operation message that ended in `fail` (not `expired`), as published.",
            "description": "Republished by the worker to the dead-letter exchange."
            + common
            + ANY_CONTENT,
            "correlationId": ref("components", "correlationIds", "request"),
            "headers": {
                "type": "object",
                "properties": reason,
                "required": [
                    "x-vmworker-error-code",
                    "x-vmworker-error-source",
                    "x-vmworker-reason",
                    "x-original-user-id",
                ],
                "additionalProperties": True,
            },
            "payload": body,
        },
        "dead_letter_delivery_limit": {
            "name": "dead_letter_delivery_limit",
            "title": "dead letter (past the delivery limit)",
            "summary": "A message that made the worker die more than `x-delivery-limit` times.",
            "description": "Dead-lettered by RabbitMQ itself (an `x-death` header, no"
            " `x-vmworker-*` header); at its next start the worker publishes the request's"
            " `fail` with `error.code: delivery_limit`." + ANY_CONTENT,
            "correlationId": ref("components", "correlationIds", "request"),
            "headers": {
                "type": "object",
                "properties": {"x-death": {"type": "array", "description": "RabbitMQ's"}},
                "required": ["x-death"],
                "additionalProperties": True,
            },
            "payload": body,
        },
    }


# what one worker sends another's queue (docs/protocol.md, Migration)
