"""docs/asyncapi.yaml (`vmworker asyncapi`): in sync with the models, every op and event kind in
it, and its draft-07 payloads say what the contract's 2020-12 schemas say
(tests/integration/test_asyncapi.py has the AsyncAPI project's parser validate it)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from referencing import Registry
from referencing.jsonschema import DRAFT7

from tests.schemagen import Generator, ecma, validator
from tests.unit.test_contract_events import TERMINAL, VM, _op
from tests.unit.test_contract_schema import _ODD, _paths, _set
from worker import asyncapi_schema, events
from worker.asyncapi import SchemaConversionError, asyncapi_document, to_draft07, to_yaml
from worker.cli import main
from worker.eventschema import event_schema
from worker.messages import OP_MODELS, message_schema
from worker.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.yaml"
DOC = asyncapi_document()


def test_the_committed_document_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == to_yaml(DOC), (
        "docs/asyncapi.yaml is out of date with the models: regenerate it with"
        " `.venv/bin/vmworker asyncapi > docs/asyncapi.yaml` and commit it"
    )


# libyaml's parser where PyYAML has it: the same safe loading, several times faster on 230 kB
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def test_the_command_prints_the_document_as_yaml_and_as_json() -> None:
    runner = CliRunner()
    as_yaml = runner.invoke(main, ["asyncapi"])
    as_json = runner.invoke(main, ["asyncapi", "--json"])
    assert as_yaml.exit_code == 0 and as_json.exit_code == 0, as_yaml.output + as_json.output
    assert yaml.load(as_yaml.output, Loader=_Loader) == json.loads(as_json.output) == _plain(DOC)
    prefixed = runner.invoke(main, ["asyncapi", "--prefix", "tenant1"]).output
    other = yaml.load(prefixed, Loader=_Loader)
    assert other["channels"]["hostQueue"]["address"] == "tenant1.ops.{host}"


def _plain(doc: dict[str, Any]) -> Any:
    return json.loads(json.dumps(doc))


def test_every_operation_is_a_message_the_worker_receives() -> None:
    received = DOC["operations"]["receiveOperation"]
    assert received["action"] == "receive"
    assert received["channel"] == {"$ref": "#/channels/hostQueue"}
    names = {m["$ref"].rsplit("/", 1)[1] for m in received["messages"]}
    assert names == set(OP_MODELS)
    for op in OP_MODELS:
        msg = DOC["components"]["messages"][op]
        assert msg["headers"] == {"$ref": "#/components/schemas/OperationHeaders"}
        assert msg["correlationId"]["$ref"] == "#/components/correlationIds/request"
        assert msg["payload"]["schemaFormat"] == "application/schema+json;version=draft-07"
    # the terminal events answer it
    reply = {m["$ref"].rsplit("/", 1)[1] for m in received["reply"]["messages"]}
    assert reply == {"event_operation_before", "event_operation_after", "event_operation_fail"}


def test_operation_headers_and_properties_are_what_the_worker_reads() -> None:
    schemas = DOC["components"]["schemas"]
    headers = schemas["OperationHeaders"]
    assert {"x-deadline", "traceparent", "tracestate", "x-replay-of"} <= set(headers["properties"])
    assert "required" not in headers  # every header is optional
    check = jsonschema.Draft7Validator(headers)
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert check.is_valid({"traceparent": trace, "tracestate": "a=1", "x-deadline": 1700000000})
    assert not check.is_valid({"traceparent": "not a trace"})
    props = schemas["OperationProperties"]
    assert props["required"] == ["message_id"]
    assert jsonschema.Draft7Validator(props).is_valid({"message_id": "r1", "delivery_mode": 2})
    assert not jsonschema.Draft7Validator(props).is_valid({"correlation_id": "c"})


def test_queues_carry_the_topology_s_arguments() -> None:
    ch = DOC["channels"]
    host_q = ch["hostQueue"]["bindings"]["amqp"]
    assert host_q["is"] == "queue"
    assert host_q["queue"]["name"] == "vm.ops.{host}"
    assert host_q["queue"]["x-arguments"] == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 5,
        "x-dead-letter-exchange": "vm.ops.dlx",
        "x-dead-letter-routing-key": "{host}",
    }
    assert host_q["x-bindings"] == [{"exchange": "vm.ops", "routingKey": "{host}"}]
    topo = Topology(prefix="vm", host="{host}")
    for stream, exchange, max_bytes in (
        ("operationsLog", "vm.ops", topo.ops_max_bytes),
        ("eventsLog", "vm.events", topo.events_max_bytes),
    ):
        b = ch[stream]["bindings"]["amqp"]
        assert b["queue"]["x-arguments"] == {
            "x-queue-type": "stream",
            "x-max-age": "7D",
            "x-max-length-bytes": max_bytes,
        }
        assert b["x-bindings"] == [{"exchange": exchange, "routingKey": "#"}]
    assert ch["deadLetterQueue"]["bindings"]["amqp"]["queue"]["name"] == "vm.ops.{host}.dead"
    assert ch["operations"]["bindings"]["amqp"]["exchange"]["type"] == "topic"
    assert ch["operationEvents"]["address"] == "{host}.{op}.{phase}"
    params = ch["operationEvents"]["parameters"]
    assert params["phase"]["enum"] == ["before", "after", "fail", "progress"]
    assert "invalid" in params["op"]["enum"]
    for c in ch.values():  # every {parameter} of an address is declared, and only those
        assert set(re.findall(r"\{(\w+)\}", c["address"] or "")) == set(c.get("parameters", {}))


def test_every_event_kind_of_the_events_schema_is_a_message() -> None:
    msgs = DOC["components"]["messages"]
    kinds = {n for n in msgs if n.startswith("event_")}
    names = {asyncapi_schema.event_message_name(k["words"]) for k in asyncapi_schema.event_kinds()}
    assert kinds == names
    assert kinds >= {
        "event_operation_before",
        "event_operation_after",
        "event_operation_fail",
        "event_operation_progress",
        "event_state",
        "event_host_online",
        "event_host_heartbeat",
        "event_host_offline",
    }
    assert set(DOC["channels"]["eventsLog"]["messages"]) == kinds
    envelope = DOC["components"]["schemas"]["CloudEvent"]
    assert envelope["properties"]["specversion"] == {"const": "1.0"}
    assert "oneOf" not in envelope and "$schema" not in envelope


def test_a_new_event_kind_appears_without_touching_the_generator(monkeypatch) -> None:
    def more() -> dict[str, Any]:
        schema = event_schema()
        data = {"type": "object", "properties": {"host": {"type": "string"}}}
        schema["oneOf"].append(
            {"properties": {"type": {"pattern": r"^vmworker\.host\.inventory$"}, "data": data}}
        )
        return schema

    monkeypatch.setattr(asyncapi_schema, "event_schema", more)
    doc = asyncapi_document()
    assert doc["channels"]["hostInventoryEvents"]["address"] == "{host}.host.inventory"
    assert "event_host_inventory" in doc["components"]["messages"]
    assert "sendHostInventoryEvents" in doc["operations"]


def test_what_cannot_be_said_in_draft_07_or_as_a_routing_key_fails_loudly() -> None:
    with pytest.raises(SchemaConversionError, match="prefixItems"):
        to_draft07({"type": "array", "prefixItems": [{"type": "string"}]}, {})
    with pytest.raises(SchemaConversionError, match="two different"):
        to_draft07({"$defs": {"Spec": {"type": "integer"}}}, {"Spec": {"type": "string"}})
    with pytest.raises(SchemaConversionError, match="routing-key word"):
        asyncapi_schema._templates(r"^vmworker\.host\.[0-9]+$")
    # a field named like a keyword is a field, not a keyword
    assert to_draft07({"properties": {"prefixItems": {"$ref": "#/$defs/A"}}}, {}) == {
        "properties": {"prefixItems": {"$ref": "#/components/schemas/A"}}
    }


def test_the_payloads_are_the_contract_s_schemas_with_only_their_references_moved() -> None:
    schemas = _plain(DOC)["components"]["schemas"]
    for op in OP_MODELS:
        schema = message_schema(op)
        text = json.dumps(schema).replace('"#/$defs/', '"#/components/schemas/')
        moved = json.loads(text)
        for name, sub in moved.pop("$defs").items():
            assert schemas[name] == sub, name
        del moved["$schema"], moved["$id"]
        assert schemas[schema["title"]] == moved
        assert DOC["components"]["messages"][op]["payload"]["schema"] == {
            "$ref": f"#/components/schemas/{schema['title']}"
        }


# ---- the draft-07 payloads accept what the 2020-12 schemas accept ---------------------------

_REGISTRY: Registry = Registry().with_resource(  # type: ignore[call-arg]
    "urn:vmworker:asyncapi", DRAFT7.create_resource(_plain(DOC))
)


def _pattern(v: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if v.is_type(instance, "string") and not re.search(ecma(pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Draft7 = jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": _pattern})


def _payload_check(message: str) -> Any:
    schema = _plain(DOC)["components"]["messages"][message]["payload"]["schema"]
    return _Draft7(_anchor(schema), registry=_REGISTRY)


def _anchor(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its document-local references made absolute (it is checked on its own)."""
    text = json.dumps(schema).replace('"#/components/', '"urn:vmworker:asyncapi#/components/')
    return dict(json.loads(text))


@cache
def _checks(op: str) -> tuple[Any, Any]:
    """(the contract's 2020-12 validator, the draft-07 payload's) of `op`, made once."""
    return validator(message_schema(op)), _payload_check(op)


@cache
def _bodies(op: str) -> st.SearchStrategy[Any]:
    """Messages of `op` drawn from its schema: one generator per op, not one per example."""
    return Generator(message_schema(op)).strategy()


BODIES = st.sampled_from(sorted(OP_MODELS)).flatmap(lambda op: st.tuples(st.just(op), _bodies(op)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES, st.data())
def test_draft_07_payloads_agree_with_the_contract_both_ways(body: Any, data: Any) -> None:
    op, msg = body
    if data.draw(st.booleans()):  # a value anywhere replaced: often invalid, both must say so
        msg = _set(msg, data.draw(st.sampled_from(_paths(msg))), data.draw(_ODD))
    check_2020, check_07 = _checks(op)
    assert check_07.is_valid(msg) == check_2020.is_valid(msg), (op, msg)


def _samples() -> list[tuple[str, dict[str, Any]]]:
    error = {"code": "bad_state", "message": "no", "source": "libvirt"}
    error |= {"libvirt_code": 55, "hook": None}
    vm = {"uuid": VM, "name": "web"}
    state = {"host": "h1", "vm": vm, "state": "started", "reason": "booted"}
    state["domain_state"] = "running"
    offline = {"host": "h1", "reason": "stopped", "stopped_at": events.now_iso()}
    offline["worker"] = {"version": "1", "pid": 7, "started_at": events.now_iso(), "uptime_s": 1}
    return [
        ("event_operation_before", _op("before", recovered=False)),
        ("event_operation_after", _op("after", recovered=False, **TERMINAL)),
        ("event_operation_fail", _op("fail", **TERMINAL, error=error)),
        (
            "event_state",
            events.cloud_event("h1", ("state", "started"), subject=VM, request_id=None, data=state),
        ),
        (
            "event_host_offline",
            events.cloud_event(
                "h1", ("host", "offline"), subject=None, request_id=None, data=offline
            ),
        ),
    ]


@pytest.mark.parametrize(
    ("message", "event"), _samples(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_each_event_is_valid_as_its_own_message_only(message: str, event: dict[str, Any]) -> None:
    assert validator(event_schema()).is_valid(event)
    errors = [e.message for e in _payload_check(message).iter_errors(event)]
    assert errors == []
    others = [n for n in DOC["components"]["messages"] if n.startswith("event_") and n != message]
    assert not [n for n in others if _payload_check(n).is_valid(event)]
