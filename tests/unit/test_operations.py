"""One declaration per operation: every op the message schema accepts is declared once, with a
hook point of the hook table and the states it causes; a new op is a declaration plus its
functions; and the declarations' types let mypy catch a renamed param."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import libvirt
import pytest
from pydantic import Field

from handlers import Ctx, Operation, declare
from handlers.connection import LibvirtConnection
from handlers.errors import OpError
from handlers.message import OpMessage, Strict
from handlers.operations import OPERATIONS
from worker.config import Settings
from worker.domevents import _EVENT_KINDS, Ownership, expected_states
from worker.hooks import POINTS, HookEngine
from worker.messages import OP_MODELS, json_schemas, parse_operation
from worker.runner import Runner, check_declarations

ROOT = Path(__file__).resolve().parents[2]
STATE_WORDS = {state for state, _ in _EVENT_KINDS.values()} | {"crashed"}


def test_every_op_of_the_schema_has_one_declaration_a_hook_point_and_expected_states():
    assert sorted(json_schemas()) == sorted(OP_MODELS) == sorted(OPERATIONS)
    assert len({d.message for d in OPERATIONS.values()}) == len(OPERATIONS)
    for name, declared in OPERATIONS.items():
        assert declared.name == name == declared.message.op_name()
        for chain in (f"before_{declared.point}", f"after_{declared.point}"):
            assert POINTS[chain].payload == declared.payload, chain
        assert POINTS[f"after_{declared.point}_fail"].payload == declared.payload
        assert declared.expects and set(declared.expects) <= STATE_WORDS, name
        assert expected_states(name) == frozenset(declared.expects)
    check_declarations()
    with pytest.raises(ValueError, match="declared twice"):
        declare(OPERATIONS["start_vm"])


def test_the_protocol_doc_names_each_ops_hook_point_as_declared():
    # the op table's rows: | `op` [/ `op`] | vm | params | `point` [/ `point`] |
    row = re.compile(r"^\| (`\w+`(?: / `\w+`)*) \|.*\| (`\w+`(?: / `\w+`)*) \|$", re.M)
    documented = {
        op: point
        for ops, points in row.findall(_op_messages_section())
        for op, point in zip(
            re.findall(r"`(\w+)`", ops), re.findall(r"`(\w+)`", points), strict=True
        )
    }
    assert documented == {name: d.point for name, d in OPERATIONS.items()}


def _protocol() -> str:
    return (ROOT / "docs" / "protocol.md").read_text()


def _op_messages_section() -> str:
    """The section with the op table (other sections have tables with an op per row, too)."""
    return _protocol().split("## Operation messages", 1)[1].split("\n## ", 1)[0]


def test_a_state_change_update_device_does_not_cause_is_published():
    own = Ownership()
    own.acquire("vm1", "r1", "update_device")
    assert own.judge("vm1", "defined").suppress  # its persistent change
    verdict = own.judge("vm1", "stopped")
    assert not verdict.suppress and verdict.request_id == "r1"


# -- a new operation: a model, a declaration, its functions ----------------------------------
class DescribeParams(Strict):
    text: str = Field(max_length=200)


class DescribeVm(OpMessage):
    op: Literal["describe_vm"]
    params: DescribeParams  # type: ignore[assignment]


def _description(ctx: Ctx[DescribeVm]) -> str:
    try:
        return str(
            ctx.domain().metadata(
                libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None, libvirt.VIR_DOMAIN_AFFECT_CONFIG
            )
        )
    except libvirt.libvirtError:
        return ""


def _describe(ctx: Ctx[DescribeVm], _xml: str) -> None:
    ctx.domain().setMetadata(
        libvirt.VIR_DOMAIN_METADATA_DESCRIPTION,
        ctx.op.params.text,
        None,
        None,
        libvirt.VIR_DOMAIN_AFFECT_CONFIG,
    )


@pytest.fixture
def registry() -> Iterator[dict[str, Operation[Any]]]:
    saved = dict(OPERATIONS)
    yield OPERATIONS
    OPERATIONS.clear()
    OPERATIONS.update(saved)


@pytest.fixture
def test_domain() -> Iterator[str]:
    conn = libvirt.open("test:///default")
    vm = str(uuid.uuid4())
    xml = (
        f"<domain type='test'><name>d-{vm[:8]}</name><uuid>{vm}</uuid>"
        "<memory>65536</memory><os><type>hvm</type></os></domain>"
    )
    dom = conn.defineXML(xml)
    yield vm
    dom.undefine()
    conn.close()


def test_a_new_operation_is_a_declaration_and_its_functions(registry, test_domain, tmp_path):
    declare(
        Operation(
            DescribeVm,
            point="vm_set_ticket",
            payload="domxml",
            expects=("defined",),
            prepare=lambda ctx: ctx.current_xml(inactive=True),
            execute=_describe,
            done=lambda ctx: _description(ctx) == ctx.op.params.text,
        )
    )
    doc = {"op": "describe_vm", "vm": {"uuid": test_domain}, "params": {"text": "web tier"}}
    body = json.dumps(doc)
    op = parse_operation(body.encode(), max_bytes=4096)
    assert isinstance(op, DescribeVm) and op.params.text == "web tier"
    assert json_schemas()["describe_vm"]["title"] == "DescribeVm"
    with pytest.raises(OpError) as bad:  # the envelope's rules hold for it too
        parse_operation(json.dumps({**doc, "custom": {"PATH": "/x"}}).encode(), max_bytes=4096)
    assert bad.value.code == "bad_custom"
    assert expected_states("describe_vm") == {"defined"}

    settings = Settings(
        host="h", libvirt_uri="test:///default", hooks_root=tmp_path, state_dir=tmp_path
    )
    runner = Runner(settings, LibvirtConnection("test:///default"), HookEngine(tmp_path))
    out = runner.run(op, request_id="r1")
    assert out.ok and not out.noop and out.state == "shutoff"
    again = runner.run(op, request_id="r2")
    assert again.ok and again.noop  # its `done` says the description is there already
    conn = libvirt.open("test:///default")
    dom = conn.lookupByUUIDString(test_domain)
    assert dom.metadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None, 0) == "web tier"


# -- mypy sees the declared params -----------------------------------------------------------
def test_a_renamed_param_is_a_type_error_in_its_handler(tmp_path):
    pytest.importorskip("mypy")
    shutil.copytree(ROOT / "handlers", tmp_path / "handlers")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    devices = tmp_path / "handlers" / "devices.py"
    source = devices.read_text()
    field = "    count: int = Field(ge=1, le=255)"
    assert field in source
    devices.write_text(source.replace(field, field.replace("count", "vcpus")))
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", ".mypy_cache", "handlers/devices.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert '"SetVcpusParams" has no attribute "count"' in out.stdout


def test_a_worker_refuses_an_operation_whose_hook_point_is_not_in_the_table(registry, tmp_path):
    declare(
        Operation(
            DescribeVm,
            point="vm_describe",
            payload="domxml",
            expects=("defined",),
            prepare=lambda ctx: ctx.current_xml(),
            execute=_describe,
        )
    )
    settings = Settings(
        host="h", libvirt_uri="test:///default", hooks_root=tmp_path, state_dir=tmp_path
    )
    with pytest.raises(ValueError, match="'vm_describe' is not in the table"):
        Runner(settings, LibvirtConnection("test:///default"), HookEngine(tmp_path))
    OPERATIONS["describe_vm"] = replace(OPERATIONS["describe_vm"], point="disk_hotplug")
    with pytest.raises(ValueError, match="hands its hooks domxml, but 'disk_hotplug'"):
        Runner(settings, LibvirtConnection("test:///default"), HookEngine(tmp_path))
