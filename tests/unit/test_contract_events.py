"""The events' JSON Schema (`vmworker schema --events`): standard 2020-12, one time format, and
what the worker builds follows it (the integration tests check every event they see, too)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from handlers.connection import LibvirtConnection
from handlers.errors import OpError
from tests.schemagen import check_schema, validator
from worker import events
from worker.eventschema import TIME_PATTERN, event_schema
from worker.heartbeat import Heartbeat
from worker.hooks import HookEngine

SCHEMA = event_schema()
CHECK = validator(SCHEMA)
DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
VM = "6f1c1a0e-3c1b-4c55-9d0e-2a7b5f2c9e01"


def _errors(ev: dict[str, Any]) -> list[str]:
    return [e.message for e in CHECK.iter_errors(ev)]


def test_the_events_schema_is_standard_json_schema_2020_12() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"] == "urn:vmworker:schema:event:1"
    check_schema(SCHEMA)  # the meta-schema's verdict (once per process: tests.schemagen)


def _op(phase: str, **fields: Any) -> dict[str, Any]:
    return events.op_event(
        "h1",
        "start_vm",
        phase,
        request_id="r1",
        correlation_id=None,
        vm_uuid=VM,
        vm_name=None,
        redelivered=False,
        **fields,
    )[1]


TERMINAL = {"attempt": 1, "duration_ms": 3.5, "state": "running", "hooks": [], "noop": False}


def test_operation_events_follow_the_schema_phase_by_phase() -> None:
    err = OpError(
        "bad_state", "no", "libvirt", libvirt_code=55, details={"state": "x", "allowed": []}
    )
    assert _errors(_op("before", recovered=False)) == []
    assert _errors(_op("after", recovered=False, **TERMINAL, target="vdb")) == []
    fail = _op("fail", recovered=False, **TERMINAL, error=err.to_event())
    assert _errors(fail) == []
    assert _errors(events.as_duplicate(fail, redelivered=True)) == []
    # what a phase does not carry, or a field nobody documented, is an error
    assert _errors(_op("before", recovered=False, error=err.to_event()))
    assert _errors(_op("after", recovered=False, **TERMINAL, surprise=1))
    assert _errors(_op("fail", recovered=False, **TERMINAL))  # no error


def test_host_events_follow_the_schema_and_every_time_is_one_format(tmp_path: Path) -> None:
    sink: list[tuple[str, dict[str, Any]]] = []
    (tmp_path / "hooks").mkdir()
    beat = Heartbeat(
        host="h1",
        interval=3600,
        sink=lambda rk, ev: sink.append((rk, ev)),
        libvirt_conn=LibvirtConnection("test:///default"),
        hooks=HookEngine(tmp_path / "hooks"),
        online_by_caller=True,
    )
    beat.online(3)
    beat.tick()
    beat.stop(offline=True)
    (online, inventory, heartbeat, offline) = [ev for _, ev in sink]
    assert online["data"]["queue_depth"] == 3
    assert inventory["data"]["reason"] == "online"
    for ev in (online, inventory, heartbeat, offline):
        assert _errors(ev) == [], ev["type"]
    for t in (
        online["time"],
        online["data"]["worker"]["started_at"],
        offline["data"]["stopped_at"],
    ):
        assert re.fullmatch(TIME_PATTERN, t), t


def test_a_time_in_another_format_is_refused() -> None:
    ev = _op("before", recovered=False)
    assert _errors({**ev, "time": "2026-11-22T04:15:43.533123+00:00"})


@pytest.mark.parametrize("kind", ["before", "after", "fail"])
def test_every_field_of_an_operation_event_is_in_the_docs_table(kind: str) -> None:
    branch = next(b for b in SCHEMA["oneOf"] if kind in b["properties"]["type"]["pattern"])
    for name in branch["properties"]["data"]["properties"]:
        assert f"| `{name}` |" in DOC, name
    for name in SCHEMA["properties"]:
        assert f"| `{name}` |" in DOC, name


def test_vmworker_schema_prints_the_message_and_the_event_schemas() -> None:
    import json

    from click.testing import CliRunner

    from worker.cli import main

    runner = CliRunner()
    messages = json.loads(runner.invoke(main, ["schema"]).output)
    assert messages["$id"] == "urn:vmworker:schema:message:1" and "oneOf" in messages
    one = json.loads(runner.invoke(main, ["schema", "start_vm"]).output)
    assert one["$id"] == "urn:vmworker:schema:message:1:start_vm"
    assert json.loads(runner.invoke(main, ["schema", "--events"]).output) == SCHEMA
