"""The AsyncAPI 3.0 document of the wire contract (`vmworker asyncapi`, committed as
docs/asyncapi.yaml), generated from what the worker itself uses: the topology
(worker/topology.py), the message models (`vmworker schema`), the events' schema
(`vmworker schema --events`) and the properties and headers the worker reads and writes.

Point of view: **the worker** (one host's). It *receives* operation messages from its host queue
and *sends* events, dead letters, and a migration's messages to another host's queue; a control
plane does the opposite (it sends where the worker receives).

Payload schemas: the AsyncAPI parser validates JSON Schema draft-07 (and the AsyncAPI Schema
Object, a superset of it), not 2020-12. The contract's schemas use no 2020-12 keyword but `$defs`
(and `$schema`/`$id`), so the conversion is: every `$defs` entry becomes a
`components.schemas` entry (the same name for the same model in every op; a clash is an error),
each `$ref` `#/$defs/X` becomes `#/components/schemas/X`, and `$schema`/`$id` are dropped (the
payloads say `schemaFormat: application/schema+json;version=draft-07`). A 2020-12-only keyword
appearing in a schema makes the generator fail rather than say something else than the schema.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from handlers.message import MESSAGE_VERSION
from handlers.operations import OPERATIONS
from worker import events
from worker.config import Settings
from worker.eventschema import event_schema
from worker.messages import HOST_CHECKS, OP_MODELS, message_schema
from worker.topology import Topology

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING = "0.3.0"
DRAFT_07 = "application/schema+json;version=draft-07"
SCHEMAS = "#/components/schemas/"
# keywords of JSON Schema 2019-09/2020-12 that draft-07 does not have (or reads otherwise)
_NEWER_KEYWORDS = frozenset(
    {
        "prefixItems",
        "unevaluatedItems",
        "unevaluatedProperties",
        "dependentRequired",
        "dependentSchemas",
        "$anchor",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$recursiveAnchor",
        "$vocabulary",
        "minContains",
        "maxContains",
    }
)
# what an event type's pattern (worker/eventschema.py) says, segment by segment
_OP_WORD = "[a-z][a-z0-9_]*"
_ANY_WORD = "[A-Za-z0-9_-]+"
_LITERAL = re.compile(r"[a-z_]+")
_ALTERNATIVES = re.compile(r"\(([a-z_|]+)\)")
_TRACEPARENT = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


class SchemaConversionError(ValueError):
    """A schema this module cannot say in draft-07 as it is."""


def to_draft07(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """`schema` (2020-12) as the AsyncAPI parser reads it: its `$defs` moved into `schemas`
    (`components.schemas`), references to them rewritten, `$schema`/`$id` dropped."""
    out = copy.deepcopy(schema)
    out.pop("$schema", None)
    out.pop("$id", None)
    defs = out.pop("$defs", {})
    for name, sub in defs.items():
        sub = _rewrite(sub)
        if name in schemas and schemas[name] != sub:
            raise SchemaConversionError(f"two different schemas named {name!r}")
        schemas[name] = sub
    return _rewrite(out)


def _rewrite(node: Any, under: str | None = None) -> Any:
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if under in ("properties", "patternProperties"):  # names of fields, not keywords
            out[key] = _rewrite(value)
            continue
        if key in _NEWER_KEYWORDS or key == "$defs":
            raise SchemaConversionError(f"{key} has no draft-07 equivalent here")
        if key == "$ref":
            if not value.startswith("#/$defs/"):
                raise SchemaConversionError(f"a $ref outside $defs: {value}")
            out[key] = SCHEMAS + value.removeprefix("#/$defs/")
        elif key in ("default", "const", "enum", "examples"):
            out[key] = value
        else:
            out[key] = _rewrite(value, key)
    return out


# ---- events: kinds from worker/eventschema.py ------------------------------------------------


def event_kinds() -> list[dict[str, Any]]:
    """Every kind of event `event_schema()` names, one per routing-key template: `words`
    (after `<host>.`, `{op}`/`{state}` for parameters), `type` (a pattern of the CloudEvents
    `type`) and `data` (its schema)."""
    out = []
    for branch in event_schema()["oneOf"]:
        pattern = branch["properties"]["type"]["pattern"]
        data = branch["properties"]["data"]
        for words in _templates(pattern):
            out.append({"words": words, "type": _type_pattern(words), "data": data})
    return out


def _templates(pattern: str) -> list[list[str]]:
    """`^vmworker\\.host\\.(online|heartbeat)$` -> [["host", "online"], ["host", "heartbeat"]]."""
    if not (pattern.startswith("^vmworker\\.") and pattern.endswith("$")):
        raise SchemaConversionError(f"event type pattern {pattern!r}: not ^vmworker\\....$")
    options: list[list[str]] = [[]]
    segments = pattern.removeprefix("^vmworker\\.").removesuffix("$").split("\\.")
    for i, seg in enumerate(segments):
        if seg == _OP_WORD and i == 0:
            words = ["{op}"]
        elif seg == _ANY_WORD and i > 0 and _LITERAL.fullmatch(segments[i - 1]):
            words = ["{" + segments[i - 1] + "}"]  # state.{state}
        elif _LITERAL.fullmatch(seg):
            words = [seg]
        elif m := _ALTERNATIVES.fullmatch(seg):
            words = m.group(1).split("|")
        else:
            raise SchemaConversionError(
                f"event type pattern {pattern!r}: cannot read {seg!r} as a routing-key word"
                " (worker/asyncapi.py knows an op, a word after a literal, literals and"
                " (a|b) alternatives)"
            )
        options = [[*o, w] for o in options for w in words]
    return options


def _type_pattern(words: list[str]) -> str:
    regex = {"{op}": _OP_WORD}
    parts = [regex.get(w, _ANY_WORD if w.startswith("{") else re.escape(w)) for w in words]
    return "^vmworker\\." + "\\.".join(parts) + "$"


def _event_message_name(words: list[str]) -> str:
    if words[0] == "{op}":
        return "event_operation_" + "_".join(words[1:])
    return "event_" + "_".join(w.strip("{}") for w in words if w != "{" + words[0] + "}")


# ---- the document -----------------------------------------------------------------------------


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


def _topology(prefix: str) -> Topology:
    return Topology(
        prefix,
        "{host}",
        delivery_limit=_default("delivery_limit"),
        ops_max_age=_default("ops_log_max_age"),
        events_max_age=_default("events_log_max_age"),
    )


def _exchange_binding(exchange: Any) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": {
                "name": exchange.name,
                "type": exchange.type,
                "durable": bool(exchange.durable),
                "autoDelete": bool(exchange.auto_delete),
                "vhost": "/",
            },
            "bindingVersion": AMQP_BINDING,
        }
    }


def _queue_binding(queue: Any) -> dict[str, Any]:
    """A queue's binding: its name and flags, its declare arguments (`x-arguments`: quorum,
    stream, delivery limit, dead-lettering) and what it is bound to (`x-bindings`)."""
    return {
        "amqp": {
            "is": "queue",
            "queue": {
                "name": queue.name,
                "durable": bool(queue.durable),
                "exclusive": bool(queue.exclusive),
                "autoDelete": bool(queue.auto_delete),
                "vhost": "/",
                "x-arguments": dict(queue.queue_arguments or {}),
            },
            "x-bindings": [{"exchange": queue.exchange.name, "routingKey": queue.routing_key}],
            "bindingVersion": AMQP_BINDING,
        }
    }


# what docs/protocol.md's Events table says of each routing key (a kind not listed gets a
# generic description: it still appears)
_EVENT_CHANNELS = {
    "{op}.{phase}": "An operation's events: `before` when an accepted operation starts (once per"
    " request id, even across crashes), `after` or `fail` its terminal outcome (exactly one per"
    " request id; a re-sent copy has `data.duplicate: true`), `progress` news of a running one"
    " (`migrate_vm`, never terminal). A message whose `op` is not known fails as"
    " `<host>.invalid.fail`; a message refused before it could run gets only a `fail`.",
    "state.{state}": "A change libvirt reports that no operation asked for.",
    "host.online": "The first event of a worker's run, before any operation's: liveness and"
    " counters as in a heartbeat, with the queue depth found waiting.",
    "host.inventory": "The host's inventory (libvirt, memory, domains, hooks): right after"
    " `host.online`, whenever its digest changes, and every `inventory_interval` as a snapshot.",
    "host.heartbeat": "Every `heartbeat_interval`: liveness and counters, with the digest of"
    " the current inventory.",
    "host.offline": "A clean stop.",
}

_PARAMS: dict[str, dict[str, Any]] = {
    "host": {
        "description": "A host id (`[A-Za-z0-9_-]+`, no dots): the routing key of its queue.",
        "examples": ["host-a"],
    },
    "phase": {
        "description": "`before` (started), `after` / `fail` (the terminal outcome, exactly one"
        " per request id), `progress` (news of a running operation, never terminal).",
    },
    "state": {
        "description": "What libvirt reported that no operation asked for (`started`,"
        " `stopped`, `undefined`, ...; docs/operations.md, State events).",
        "examples": ["started", "stopped"],
    },
}


def _params(address: str, **enums: list[str]) -> dict[str, Any]:
    out = {}
    for name in re.findall(r"\{([a-z]+)\}", address):
        p = dict(_PARAMS.get(name, {}))
        if name == "op":
            p["description"] = "The operation (`invalid`: a message that named no known op)."
        if name in enums:
            p["enum"] = enums[name]
        out[name] = p
    return out


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(path)}


def _op_headers() -> dict[str, Any]:
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
                "pattern": _TRACEPARENT,
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


_OP_PROPERTIES: dict[str, Any] = {
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


def _op_messages(schemas: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for op in sorted(OP_MODELS):
        schema = message_schema(op)
        payload = to_draft07(schema, schemas)
        title = payload.get("title", op)
        if title in schemas and schemas[title] != payload:
            raise SchemaConversionError(f"two different schemas named {title!r}")
        schemas[title] = payload
        declared = OPERATIONS[op]
        chains = ", ".join(_chain(c, declared.point) for c in declared.chains)
        summary = f"Hook point `{declared.point}` (chains: {chains})." if chains else "No hooks."
        if op in _PEER_OPS:
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
            "correlationId": _ref("components", "correlationIds", "request"),
            "headers": _ref("components", "schemas", "OperationHeaders"),
            "payload": {"schemaFormat": DRAFT_07, "schema": _ref("components", "schemas", title)},
            "x-amqp-properties": _ref("components", "schemas", "OperationProperties"),
        }
    return out


def _chain(chain: str, point: str) -> str:
    """("after_fail", "vm_start") -> after_vm_start_fail, as docs/hooks.md names chains."""
    when, _, fail = chain.partition("_")
    return f"{when}_{point}" + (f"_{fail}" if fail else "")


def _envelope() -> dict[str, Any]:
    """The CloudEvents 1.0 envelope every event has: `event_schema()` without its kinds."""
    env = to_draft07(event_schema(), {})
    env.pop("oneOf")
    env["title"] = "CloudEvents 1.0 envelope"
    return env


def _event_messages(kinds: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for kind in kinds:
        words = kind["words"]
        name = _event_message_name(words)
        branch = {
            "properties": {"type": {"pattern": kind["type"]}, "data": kind["data"]},
            "required": ["type", "data"],
        }
        out[name] = {
            "name": name,
            "title": "event <host>." + ".".join(words),
            "summary": f"CloudEvents type vmworker.{'.'.join(words)} (docs/protocol.md, Events).",
            "contentType": events.CONTENT_TYPE,
            "correlationId": _ref("components", "correlationIds", "event"),
            "payload": {
                "schemaFormat": DRAFT_07,
                "schema": {"allOf": [_ref("components", "schemas", "CloudEvent"), branch]},
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


def _dead_letter_messages() -> dict[str, Any]:
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
            + _ANY_CONTENT,
            "correlationId": _ref("components", "correlationIds", "request"),
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
            " `fail` with `error.code: delivery_limit`." + _ANY_CONTENT,
            "correlationId": _ref("components", "correlationIds", "request"),
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
_PEER_OPS = ("prepare_incoming", "finish_incoming")
_ANY_CONTENT = " Its content type is the original's (`content_type` property), often none."


def _msgs(names: list[str]) -> dict[str, Any]:
    return {n: _ref("components", "messages", n) for n in names}


def _op_refs(channel: str, names: list[str]) -> list[dict[str, str]]:
    return [_ref("channels", channel, "messages", n) for n in names]


def asyncapi_document(prefix: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the worker's side of the wire contract."""
    prefix = prefix or _default("prefix")
    t = _topology(prefix)
    schemas: dict[str, Any] = {}
    op_messages = _op_messages(schemas)
    ops = list(op_messages)
    kinds = event_kinds()
    event_messages = _event_messages(kinds)
    schemas["OperationHeaders"] = _op_headers()
    schemas["OperationProperties"] = _OP_PROPERTIES
    schemas["CloudEvent"] = _envelope()

    channels: dict[str, Any] = {
        "operations": {
            "address": t.host_queue.routing_key,
            "title": f"{t.ops.name}: operation messages, by host",
            "description": "Operation messages are published here, persistent, with the host id"
            " as routing key; a message whose host has no queue reaches no worker (only the"
            f" `{t.ops_log.name}` stream).",
            "parameters": _params("{host}"),
            "messages": _msgs(ops),
            "bindings": _exchange_binding(t.ops),
        },
        "hostQueue": {
            "address": t.host_queue.name,
            "title": f"{t.host_queue.name}: one host's operations",
            "description": "A quorum queue bound to the operations exchange with the host id;"
            " past `x-delivery-limit` deliveries RabbitMQ dead-letters a message.",
            "parameters": _params(t.host_queue.name),
            "messages": _msgs(ops),
            "bindings": _queue_binding(t.host_queue),
        },
        "deadLetters": {
            "address": t.dead_queue.routing_key,
            "title": f"{t.dlx.name}: dead letters, by host",
            "parameters": _params("{host}"),
            "messages": _msgs(["dead_letter", "dead_letter_delivery_limit"]),
            "bindings": _exchange_binding(t.dlx),
        },
        "deadLetterQueue": {
            "address": t.dead_queue.name,
            "title": f"{t.dead_queue.name}: one host's dead letters",
            "description": "Read, and replayed, with `vmworker replay` (docs/operations.md).",
            "parameters": _params(t.dead_queue.name),
            "messages": _msgs(["dead_letter", "dead_letter_delivery_limit"]),
            "bindings": _queue_binding(t.dead_queue),
        },
        "operationsLog": {
            "address": t.ops_log.name,
            "title": f"{t.ops_log.name}: every operation message (stream)",
            "description": "A stream bound to the operations exchange with `#`, for audit and"
            " replay; a consumer says where it starts with `x-stream-offset`.",
            "messages": _msgs(ops),
            "bindings": _queue_binding(t.ops_log),
        },
    }
    # events: one channel per routing-key template; `<host>.<op>.<phase>` gathers the phases
    by_channel: dict[str, list[str]] = {}
    phases: list[str] = []
    for kind in kinds:
        words = kind["words"]
        if words[0] == "{op}":
            key = "{host}.{op}.{phase}"
            phases.append(words[1])
        else:
            key = "{host}." + ".".join(words)
        by_channel.setdefault(key, []).append(_event_message_name(words))
    event_channels = {}
    for address, names in by_channel.items():
        cid = _channel_id(address)
        event_channels[cid] = address
        channels[cid] = {
            "address": address,
            "title": f"{t.events.name}: {address}",
            "description": _EVENT_CHANNELS.get(
                address.removeprefix("{host}."), "Events of this kind (docs/protocol.md, Events)."
            ),
            "parameters": _params(address, op=[*ops, "invalid"], phase=phases),
            "messages": _msgs(names),
            "bindings": _exchange_binding(t.events),
        }
    channels["peerAnswers"] = {
        "address": None,  # <prefix>.peer.<host>.<random>: one per request asked
        "title": f"{prefix}.peer.<host>.<id>: another host's answer (migration)",
        "description": "A private queue (exclusive, auto-delete) the source of a migrate_vm binds"
        " to the events exchange with `<destination>.<op>.*` before it publishes"
        " prepare_incoming, to read the destination's terminal event.",
        "messages": _msgs(["event_operation_after", "event_operation_fail"]),
        "bindings": {
            "amqp": {
                "is": "queue",
                "queue": {"exclusive": True, "autoDelete": True, "durable": False, "vhost": "/"},
                "x-bindings": [{"exchange": t.events.name, "routingKey": "<destination>.<op>.*"}],
                "bindingVersion": AMQP_BINDING,
            }
        },
    }
    channels["eventsLog"] = {
        "address": t.events_log.name,
        "title": f"{t.events_log.name}: every event (stream)",
        "description": "A stream bound to the events exchange with `#`.",
        "messages": _msgs(list(event_messages)),
        "bindings": _queue_binding(t.events_log),
    }

    operations: dict[str, Any] = {
        "receiveOperation": {
            "action": "receive",
            "title": "Run an operation",
            "summary": "The worker consumes its host queue (manual acks) and answers each"
            " request with events: one `before`, then exactly one terminal `after` or `fail`.",
            "channel": _ref("channels", "hostQueue"),
            "messages": _op_refs("hostQueue", ops),
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}},
            "reply": {
                "channel": _ref("channels", "operationEvents"),
                "messages": _op_refs(
                    "operationEvents",
                    [n for n in by_channel["{host}.{op}.{phase}"] if not n.endswith("_progress")],
                ),
            },
        },
        "sendDeadLetter": {
            "action": "send",
            "title": "Dead-letter a failed message",
            "channel": _ref("channels", "deadLetters"),
            "messages": _op_refs("deadLetters", ["dead_letter"]),
        },
        "sendPeerOperation": {
            "action": "send",
            "title": "Ask another host's worker (migration)",
            "summary": "The source of a migrate_vm publishes prepare_incoming and"
            " finish_incoming to the destination's queue (docs/protocol.md, Migration).",
            "channel": _ref("channels", "operations"),
            "messages": _op_refs("operations", list(_PEER_OPS)),
            "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": AMQP_BINDING}},
        },
        "receivePeerAnswer": {
            "action": "receive",
            "title": "Read another host's answer (migration)",
            "channel": _ref("channels", "peerAnswers"),
            "messages": _op_refs("peerAnswers", ["event_operation_after", "event_operation_fail"]),
        },
    }
    for cid, address in event_channels.items():
        operations["send" + cid[0].upper() + cid[1:]] = {
            "action": "send",
            "title": f"Publish {address}",
            "channel": _ref("channels", cid),
            "messages": _op_refs(cid, by_channel[address]),
            "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": AMQP_BINDING}},
        }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:vmworker:asyncapi:1",
        "info": {
            "title": "vmworker",
            "version": str(MESSAGE_VERSION),  # the messages' `version`
            "description": _INFO,
            "license": {"name": "Apache-2.0"},
            "tags": [{"name": "kvm"}, {"name": "libvirt"}, {"name": "cloudevents"}],
        },
        "servers": {
            "rabbitmq": _server("amqp", 5672, "RabbitMQ (the `broker` setting)", "user"),
            "rabbitmqTls": _server(
                "amqps", 5671, "RabbitMQ over TLS (amqps://, ssl_*)", "user", "certificate"
            ),
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "messages": {**op_messages, **event_messages, **_dead_letter_messages()},
            "correlationIds": {
                "request": {
                    "description": "The AMQP property `message_id` (a basic property, not a"
                    " header): the request id. Every event of the request carries it as"
                    " `requestid` (and `data.request_id`).",
                    "location": "$message.header#/message_id",
                },
                "event": {
                    "description": "The request id (`message_id` of the operation message) an"
                    " operation's event answers; absent on state and host events.",
                    "location": "$message.payload#/requestid",
                },
            },
            "securitySchemes": {
                "user": {
                    "type": "userPassword",
                    "description": "A broker user (PLAIN/AMQPLAIN; docs/security.md).",
                },
                "certificate": {
                    "type": "X509",
                    "description": "`login_method = EXTERNAL`: the client certificate names"
                    " the user (docs/security.md).",
                },
            },
        },
    }


def _server(protocol: str, port: int, title: str, *security: str) -> dict[str, Any]:
    return {
        "host": "{broker}:{port}",
        "protocol": protocol,
        "protocolVersion": "0.9.1",
        "title": title,
        "variables": {
            "broker": {"default": "localhost", "description": "the broker's host"},
            "port": {"default": str(port)},
        },
        "security": [_ref("components", "securitySchemes", s) for s in security],
    }


def _channel_id(address: str) -> str:
    """`{host}.{op}.{phase}` -> operationEvents, `{host}.state.{state}` -> stateEvents,
    `{host}.host.online` -> hostOnlineEvents."""
    words = [w for w in address.split(".")[1:] if not w.startswith("{") or w == "{op}"]
    if words and words[0] == "{op}":
        words = ["operation"]
    return "".join([words[0], *(w.capitalize() for w in words[1:])]) + "Events"


_INFO = """The wire contract of vmworker, a per-host KVM agent: operation messages (control plane
to host) on a topic exchange routed by host id, events (CloudEvents 1.0, structured JSON) on a
topic exchange routed by `<host>.<op>.<phase>`, `<host>.state.<state>` and `<host>.host.*`,
dead letters, and the two streams that keep everything.

**Point of view: the worker** (one host's). It receives operation messages on its host queue
and sends events and dead letters; a control plane sends operation messages to the `operations`
channel and receives events. Generated by `vmworker asyncapi` from the models; docs/protocol.md
says the same in prose.

Payload schemas are the contract's JSON Schema 2020-12 (`vmworker schema`, `vmworker schema
--events`), given as draft-07: their `$defs` are `components.schemas`, nothing else changes.
AMQP basic properties (`message_id`, `correlation_id`, `user_id`, ...) have no place in
AsyncAPI: each message's `x-amqp-properties` gives them as a JSON Schema; `headers` are the AMQP
headers table. Queue arguments (quorum, stream, delivery limit, dead-lettering) are in each
queue binding's `x-arguments`, its exchange binding in `x-bindings`."""


def to_yaml(doc: dict[str, Any]) -> str:
    """YAML for people: no anchors or aliases (a shared object is written out each time), text
    of several lines as a literal block."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    out = yaml.dump(doc, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100)
    return str(out)


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


__all__ = ["SchemaConversionError", "asyncapi_document", "event_kinds", "to_draft07", "to_yaml"]
