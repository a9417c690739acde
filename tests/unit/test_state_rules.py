"""docs/protocol.md's "Operations and VM states" table is the rule handlers/states.py applies,
cell by cell, for every state libvirt can report (the integration test runs the rows
test:///default can reach through a real worker)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from handlers.errors import OpError
from handlers.states import require_state
from worker.messages import parse_operation

ROOT = Path(__file__).resolve().parent.parent.parent
UUID = str(uuid.uuid4())
SPEC = {"uuid": UUID, "name": "vm-1", "vcpus": 1, "memory_mib": 128}
DEVICE_OPS = {
    "attach_disk": {"disk": {"path": "/var/lib/vmworker/data.img"}},
    "detach_disk": {"target": "vdb"},
    "attach_nic": {"nic": {"source": "br0"}},
    "detach_nic": {"mac": "52:54:00:12:34:56"},
    "update_device": {"device": "cdrom", "target": "hdc", "path": None},
    "set_vcpus": {"count": 2},
    "set_memory": {"memory_mib": 256},
}
# each row of the table: the messages it stands for
ROWS: dict[str, list[tuple[str, dict[str, Any], dict[str, Any] | None]]] = {
    "define_vm": [("define_vm", SPEC, None)],
    "start_vm": [("start_vm", {"uuid": UUID}, None)],
    "start_vm with paused: true": [("start_vm", {"uuid": UUID}, {"paused": True})],
    "shutdown_vm": [("shutdown_vm", {"uuid": UUID}, None)],
    "destroy_vm": [("destroy_vm", {"uuid": UUID}, None)],
    "reboot_vm": [("reboot_vm", {"uuid": UUID}, None)],
    "pause_vm": [("pause_vm", {"uuid": UUID}, None)],
    "resume_vm": [("resume_vm", {"uuid": UUID}, None)],
    "undefine_vm": [("undefine_vm", {"uuid": UUID}, None)],
    "undefine_vm with destroy: true": [("undefine_vm", {"uuid": UUID}, {"destroy": True})],
    "device operations": [(op, {"uuid": UUID}, p) for op, p in DEVICE_OPS.items()],
    "hibernate_vm": [("hibernate_vm", {"uuid": UUID}, None)],
    "dehibernate_vm": [("dehibernate_vm", {"uuid": UUID}, {"path": "/srv/vm.save"})],
    "set_ticket": [("set_ticket", {"uuid": UUID}, {"password": "s3cret", "valid_s": 60})],
    "migrate_vm": [("migrate_vm", {"uuid": UUID}, {"destination": "host-b"})],
}


class _Ctx:
    """What require_state reads of a Ctx: the op message, its VM's uuid and state, the launch
    flags its before_* hooks left."""

    def __init__(self, op: Any, state: str, launch_flags: int | None = None) -> None:
        self.op = op
        self.uuid = str(op.vm.uuid)
        self._state = state
        self.launch_flags = launch_flags

    def state(self) -> str:
        return self._state


def _message(op: str, vm: dict[str, Any], params: dict[str, Any] | None) -> Any:
    body = {"version": 1, "op": op, "vm": vm, **({"params": params} if params else {})}
    return parse_operation(json.dumps(body).encode(), max_bytes=1 << 20)


def _outcome(op: Any, state: str) -> str:
    try:
        return "noop" if require_state(_Ctx(op, state)) else "runs"  # type: ignore[arg-type]
    except OpError as err:
        return err.code


def _words(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _table() -> tuple[list[list[str]], list[tuple[str, list[str]]]]:
    """(the states of each column, [(row label, the outcome word of each column)])."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("## Operations and VM states", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    header, *rows = (
        [c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines if "---" not in ln
    )
    columns = [_words(c) for c in header[1:]]
    out = []
    for label, *cells in rows:
        name = re.sub(r"[`⁰¹²³⁴⁵⁶⁷⁸⁹]", "", label).strip()
        out.append((name, [_words(c)[0] for c in cells]))
    return columns, out


COLUMNS, TABLE = _table()


def test_the_table_has_a_row_for_every_operation_and_a_column_for_every_state() -> None:
    from handlers.base import STATE_NAMES, UNDEFINED

    assert [label for label, _ in TABLE] == list(ROWS)
    states = {s for col in COLUMNS for s in col}
    assert states == {*STATE_NAMES.values(), UNDEFINED, "unknown"}


@pytest.mark.parametrize(("label", "cells"), TABLE, ids=[label for label, _ in TABLE])
def test_each_cell_is_what_the_rule_does(label: str, cells: list[str]) -> None:
    for op, vm, params in ROWS[label]:
        msg = _message(op, vm, params)
        got = [{_outcome(msg, s) for s in col} for col in COLUMNS]
        assert got == [{c} for c in cells], (op, params)


def test_a_refusal_carries_the_state_found_and_the_states_allowed() -> None:
    with pytest.raises(OpError) as exc:
        require_state(_Ctx(_message("resume_vm", {"uuid": UUID}, None), "shutoff"))  # type: ignore[arg-type]
    err = exc.value.to_event()
    assert (err["code"], err["source"], err["libvirt_code"]) == ("bad_state", "libvirt", 55)
    assert (err["state"], err["allowed"]) == ("shutoff", ["paused"])
    assert err["message"].endswith("; start_vm starts it")
    with pytest.raises(OpError) as exc:
        require_state(_Ctx(_message("pause_vm", {"uuid": UUID}, None), "undefined"))  # type: ignore[arg-type]
    err = exc.value.to_event()
    assert (err["code"], err["libvirt_code"], err["state"]) == ("no_domain", 42, "undefined")


def test_start_with_a_full_spec_defines_an_undefined_vm_first() -> None:  # footnote 2
    for params in (None, {"paused": True}):
        assert _outcome(_message("start_vm", SPEC, params), "undefined") == "runs"


def test_a_start_is_judged_by_the_launch_flags_its_before_hooks_left() -> None:
    def judged(params: dict[str, Any] | None, flags: int | None, state: str) -> str:
        try:
            ctx = _Ctx(_message("start_vm", {"uuid": UUID}, params), state, flags)
            return "noop" if require_state(ctx) else "runs"  # type: ignore[arg-type]
        except OpError as err:
            return err.code

    # a hook asked for START_PAUSED (1): the start ends paused, as with params.paused
    assert [judged(None, 1, s) for s in ("shutoff", "paused", "running")] == [
        "runs",
        "noop",
        "bad_state",
    ]
    # a hook cleared it: the start ends running
    assert [judged({"paused": True}, 0, s) for s in ("shutoff", "running", "paused")] == [
        "runs",
        "noop",
        "bad_state",
    ]
    # before the hooks ran (no flags yet), params.paused decides
    assert judged(None, None, "paused") == "bad_state"


@pytest.mark.parametrize("op", list(DEVICE_OPS))
def test_device_ops_change_the_live_domain_only_where_there_is_one(op: str) -> None:  # footnote 5
    for extra in ({"live": True}, {"persistent": False}):
        msg = _message(op, {"uuid": UUID}, {**DEVICE_OPS[op], **extra})
        for state in ("shutoff", "crashed", "shutdown", "pmsuspended"):
            with pytest.raises(OpError) as exc:
                require_state(_Ctx(msg, state))  # type: ignore[arg-type]
            assert exc.value.details == {
                "state": state,
                "allowed": ["blocked", "paused", "running"],
            }
        for state in ("running", "blocked", "paused"):
            assert _outcome(msg, state) == "runs"
    # both asked of a VM that is not running: the definition alone changes
    assert (
        _outcome(_message(op, {"uuid": UUID}, {**DEVICE_OPS[op], "live": False}), "shutoff")
        == "runs"
    )
