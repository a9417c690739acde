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

import json
import re
from typing import Any

from handlers.message import MESSAGE_VERSION
from worker.asyncapi_messages import (
    AMQP_BINDING,
    OP_PROPERTIES,
    PEER_OPS,
    dead_letter_messages,
    envelope,
    event_kind_messages,
    op_headers,
    operation_messages,
    ref,
)
from worker.asyncapi_schema import (
    SchemaConversionError,
    event_kinds,
    event_message_name,
    to_draft07,
)
from worker.config import Settings
from worker.topology import Topology

ASYNCAPI_VERSION = "3.0.0"

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


def _msgs(names: list[str]) -> dict[str, Any]:
    return {n: ref("components", "messages", n) for n in names}


def _op_refs(channel: str, names: list[str]) -> list[dict[str, str]]:
    return [ref("channels", channel, "messages", n) for n in names]


def asyncapi_document(prefix: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the worker's side of the wire contract."""
    prefix = prefix or _default("prefix")
    t = _topology(prefix)
    schemas: dict[str, Any] = {}
    op_messages = operation_messages(schemas)
    ops = list(op_messages)
    kinds = event_kinds()
    event_messages = event_kind_messages(kinds)
    schemas["OperationHeaders"] = op_headers()
    schemas["OperationProperties"] = OP_PROPERTIES
    schemas["CloudEvent"] = envelope()

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
        by_channel.setdefault(key, []).append(event_message_name(words))
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
            "channel": ref("channels", "hostQueue"),
            "messages": _op_refs("hostQueue", ops),
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}},
            "reply": {
                "channel": ref("channels", "operationEvents"),
                "messages": _op_refs(
                    "operationEvents",
                    [n for n in by_channel["{host}.{op}.{phase}"] if not n.endswith("_progress")],
                ),
            },
        },
        "sendDeadLetter": {
            "action": "send",
            "title": "Dead-letter a failed message",
            "channel": ref("channels", "deadLetters"),
            "messages": _op_refs("deadLetters", ["dead_letter"]),
        },
        "sendPeerOperation": {
            "action": "send",
            "title": "Ask another host's worker (migration)",
            "summary": "The source of a migrate_vm publishes prepare_incoming and"
            " finish_incoming to the destination's queue (docs/protocol.md, Migration).",
            "channel": ref("channels", "operations"),
            "messages": _op_refs("operations", list(PEER_OPS)),
            "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": AMQP_BINDING}},
        },
        "receivePeerAnswer": {
            "action": "receive",
            "title": "Read another host's answer (migration)",
            "channel": ref("channels", "peerAnswers"),
            "messages": _op_refs("peerAnswers", ["event_operation_after", "event_operation_fail"]),
        },
    }
    for cid, address in event_channels.items():
        operations["send" + cid[0].upper() + cid[1:]] = {
            "action": "send",
            "title": f"Publish {address}",
            "channel": ref("channels", cid),
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
            "messages": {**op_messages, **event_messages, **dead_letter_messages()},
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
        "security": [ref("components", "securitySchemes", s) for s in security],
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
