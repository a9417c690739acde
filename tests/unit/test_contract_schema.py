"""The JSON Schema of operation messages is the contract: what `vmworker schema` accepts is what
the worker accepts, for everything the message alone decides. The rules across fields a JSON
Schema cannot say are listed in it (`x-rules`) and are the only way the two may differ."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from handlers.spec import RuleError
from tests.schemagen import Generator, Validator, check_schema, validator
from worker.messages import OP_MODELS, OpError, loads, message_schema, parse_operation

UUID = "6f1c1a0e-3c1b-4c55-9d0e-2a7b5f2c9e01"
SCHEMA = message_schema()
CHECK = validator(SCHEMA)
PROPS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


def _worker(doc: Any) -> tuple[bool, bool]:
    """(accepted, refused only by a rule across fields)."""
    body = json.dumps(doc).encode()
    try:
        parse_operation(body, max_bytes=1 << 20)
        return True, False
    except OpError:
        pass
    op = doc.get("op") if isinstance(doc, dict) else None
    if not isinstance(op, str) or op not in OP_MODELS:
        return False, False
    try:
        OP_MODELS[op].model_validate(loads(body))
    except ValidationError as exc:
        errors = exc.errors()
        return False, all(isinstance(e.get("ctx", {}).get("error"), RuleError) for e in errors)
    return False, False  # refused outside the model: version, custom properties


def _agree(doc: Any) -> None:
    schema_ok = CHECK.is_valid(doc)
    worker_ok, by_rule = _worker(doc)
    if schema_ok:
        assert worker_ok or by_rule, f"the schema accepts, the worker refuses: {doc}"
    else:
        assert not worker_ok, f"the worker accepts, the schema refuses: {doc}"


# -- the schema itself --------------------------------------------------------------------------
def test_the_schema_is_standard_json_schema_2020_12() -> None:
    for schema in [SCHEMA, *(message_schema(op) for op in OP_MODELS)]:
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].startswith("urn:vmworker:schema:message:1")
        check_schema(schema)  # the meta-schema's verdict (once per process: tests.schemagen)
        text = json.dumps(schema)
        assert '"discriminator"' not in text  # OpenAPI's, ignored by JSON Schema validators
        # `format` is an annotation most validators do not check: only a secret's is there
        assert set(re.findall(r'"format": "([^"]*)"', text)) <= {"password"}
        assert '"patternProperties"' not in text  # would let other names through


def test_every_op_is_one_branch_of_the_schema() -> None:
    for op in OP_MODELS:
        doc = {"op": op, "vm": {"uuid": UUID}}
        errors = list(CHECK.iter_errors({**doc, "op": "nope"}))
        assert errors
    assert not CHECK.is_valid({"op": "start_vm", "vm": {"uuid": UUID}, "extra": 1})


# -- what the issue found, each both ways ---------------------------------------------------------
SPEC = {"uuid": UUID, "name": "web-1", "vcpus": 1, "memory_mib": 512}


@pytest.mark.parametrize(
    ("doc", "valid"),
    [
        ({"op": "start_vm", "vm": {"uuid": UUID}}, True),
        ({"op": "start_vm", "vm": {"uuid": UUID, "name": "web-1"}}, True),  # a reference
        ({"op": "start_vm", "vm": SPEC}, True),  # a spec
        ({"op": "start_vm", "vm": {"uuid": UUID, "name": "web-1", "vcpus": 1}}, False),
        ({"op": "start_vm", "vm": {**SPEC, "uuid": "not-a-uuid"}}, False),
        ({"op": "start_vm", "vm": {"uuid": UUID.replace("-", "")}}, False),
        ({"op": "start_vm", "vm": {"uuid": UUID}, "custom": {"PATH": "/tmp"}}, False),
        ({"op": "start_vm", "vm": {"uuid": UUID}, "custom": {"LD_PRELOAD": "x"}}, False),
        ({"op": "start_vm", "vm": {"uuid": UUID}, "custom": {"nestedvt": "a\u0000"}}, False),
        ({"op": "start_vm", "vm": {"uuid": UUID}, "custom": {"nestedvt": "true"}}, True),
        ({"op": "set_vcpus", "vm": {"uuid": UUID}, "params": {"count": 256}}, False),
        ({"op": "set_vcpus", "vm": {"uuid": UUID}, "params": {"count": 255}}, True),
        ({"op": "set_vcpus", "vm": {"uuid": UUID}, "params": {"count": "4"}}, False),
        ({"op": "set_vcpus", "vm": {"uuid": UUID}, "params": {"count": True}}, False),
        ({"op": "set_vcpus", "vm": {"uuid": UUID}, "params": {"count": 4.0}}, True),
        ({"op": "shutdown_vm", "vm": {"uuid": UUID}, "params": {"force": "true"}}, False),
        ({"op": "shutdown_vm", "vm": {"uuid": UUID}, "params": {"timeout": 5}}, True),
        ({"op": "start_vm", "vm": {"uuid": UUID}, "version": True}, False),
        ({"op": "define_vm", "vm": {**SPEC, "graphics": {"listen": "::1"}}}, True),
        ({"op": "define_vm", "vm": {**SPEC, "graphics": {"listen": "1.2.3"}}}, False),
        ({"op": "define_vm", "vm": {**SPEC, "graphics": {"listen": "fe80::1%eth0"}}}, False),
        ({"op": "define_vm", "vm": {**SPEC, "metadata": {"xmlns": "x"}}}, False),
        (
            {
                "op": "define_vm",
                "vm": {**SPEC, "nics": [{"source": "br0", "mac": "01:00:00:00:00:01"}]},
            },
            False,
        ),
        ({"op": "define_vm", "vm": {**SPEC, "disks": [{"path": "rel/a.qcow2"}]}}, False),
        ({"op": "define_vm", "vm": {**SPEC, "description": "bell\u0007"}}, False),
        (
            {
                "op": "update_device",
                "vm": {"uuid": UUID},
                "params": {"device": "cdrom", "target": "sdc"},
            },
            True,
        ),
        ({"op": "update_device", "vm": {"uuid": UUID}, "params": {"device": "disk"}}, False),
    ],
)
def test_schema_and_worker_agree_on(doc: dict[str, Any], valid: bool) -> None:
    assert CHECK.is_valid(doc) is valid
    assert _worker(doc)[0] is valid


def test_a_spec_of_defaults_is_never_taken_for_a_reference() -> None:
    ref = OP_MODELS["start_vm"].model_validate(
        {"op": "start_vm", "vm": {"uuid": UUID, "name": "a"}}
    )
    spec = OP_MODELS["start_vm"].model_validate({"op": "start_vm", "vm": SPEC})
    assert type(ref.vm).__name__ == "VmRef"
    assert type(spec.vm).__name__ == "FullSpec"
    branches = SCHEMA["$defs"]["StartVm"]["properties"]["vm"]["oneOf"]
    # parts of SCHEMA (the meta-schema checks it whole): validators without that check again
    checks = [Validator({"$defs": SCHEMA["$defs"], **b}) for b in branches]
    for vm in ({"uuid": UUID, "name": "a"}, SPEC):  # exactly one branch each, no ambiguity
        assert len([c for c in checks if c.is_valid(vm)]) == 1


def test_rules_across_fields_are_listed_in_the_schema() -> None:
    spec = SCHEMA["$defs"]["FullSpec"]
    assert any("max_vcpus" in r for r in spec["x-rules"])
    assert SCHEMA["description"].startswith("Checked by the host, not by this schema")
    assert "max_body_bytes" in SCHEMA["description"]


# -- generated from the schema, and mutated ----------------------------------------------------
_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "4", "true", "null", UUID, "PATH", "a\n", "::1", "x" * 300]),
    st.text(max_size=8),
    st.just({}),
    st.just([]),
    st.just([1, "a"]),
)


def _paths(doc: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [here]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*here, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*here, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(doc))
    node = copy
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return copy


@pytest.mark.parametrize("op", sorted(OP_MODELS))
def test_generated_messages_are_accepted_and_mutated_ones_get_the_same_verdict(op: str) -> None:
    """Every message the schema generates the worker accepts; the same message with one value
    replaced, added or dropped gets the same verdict from both. One draw serves both checks:
    drawing a message is the slow part."""
    gen = Generator(message_schema(op)).strategy()

    @PROPS
    @given(gen, st.data())
    def check(doc: Any, data: st.DataObject) -> None:
        worker_ok, by_rule = _worker(doc)
        assert worker_ok or by_rule, f"the schema accepts, the worker refuses: {doc}"
        path = data.draw(st.sampled_from(_paths(doc)))
        how = data.draw(st.sampled_from(["replace", "add", "drop"]))
        if how == "replace":
            mutated = _set(doc, path, data.draw(_ODD))
        elif how == "add" and isinstance(doc, dict):
            mutated = {
                **doc,
                data.draw(st.sampled_from(["extra", "version", "custom"])): data.draw(_ODD),
            }
        elif path:  # drop one key of an object
            mutated = json.loads(json.dumps(doc))
            node = mutated
            for p in path[:-1]:
                node = node[p]
            if isinstance(node, dict):
                del node[path[-1]]
        else:
            mutated = doc
        _agree(mutated)

    check()
