"""Every operation asked of a VM in each state, through the real worker, RabbitMQ and libvirt's
test:///default: the terminal event says what happened (docs/protocol.md, "Operations and VM
states"). A refused operation runs no `before_*` hook and leaves the VM as it was."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest

from handlers.base import domain_state
from handlers.domxml import build_domain_xml
from handlers.spec import VmSpec

POINTS = {  # each op's hook point (docs/protocol.md)
    "define_vm": "vm_define",
    "start_vm": "vm_start",
    "shutdown_vm": "vm_shutdown",
    "destroy_vm": "vm_destroy",
    "reboot_vm": "vm_reboot",
    "pause_vm": "vm_pause",
    "resume_vm": "vm_cont",
    "undefine_vm": "vm_undefine",
    "attach_disk": "disk_hotplug",
    "detach_disk": "disk_hotunplug",
    "attach_nic": "nic_hotplug",
    "detach_nic": "nic_hotunplug",
    "update_device": "update_device",
    "set_vcpus": "set_num_of_cpus",
    "set_memory": "memory_hotplug",
    "hibernate_vm": "vm_hibernate",
    "dehibernate_vm": "vm_dehibernate",
    "set_ticket": "vm_set_ticket",
}
RAN, NOOP = "ran", "noop"
BAD, GONE = "bad_state", "no_domain"

FORCE = {"timeout": 5, "force": True}
DISK = {"disk": {"path": "/var/lib/vmworker/data.img"}}
NIC = {"nic": {"source": "br0"}}
MAC = {"mac": "52:54:00:12:34:56"}
CDROM = {"device": "cdrom", "target": "hdc", "path": None}
STATE_FILE = {"path": "TMP"}  # a state file in the test's own directory
TICKET = {"password": "pw"}

# (op, params, the VM's state before, the outcome, its state after)
ROWS: list[tuple[str, dict[str, Any] | None, str, str, str]] = [
    ("define_vm", None, "undefined", RAN, "shutoff"),
    ("define_vm", None, "shutoff", RAN, "shutoff"),
    ("define_vm", None, "running", RAN, "running"),
    ("define_vm", None, "paused", RAN, "paused"),
    ("start_vm", None, "undefined", GONE, "undefined"),  # a {uuid} only, no spec
    ("start_vm", {"spec": True}, "undefined", RAN, "running"),
    ("start_vm", None, "shutoff", RAN, "running"),
    ("start_vm", None, "running", NOOP, "running"),
    ("start_vm", None, "paused", BAD, "paused"),
    ("start_vm", {"paused": True}, "shutoff", RAN, "paused"),
    ("start_vm", {"paused": True}, "running", BAD, "running"),
    ("start_vm", {"paused": True}, "paused", NOOP, "paused"),
    ("shutdown_vm", FORCE, "undefined", GONE, "undefined"),
    ("shutdown_vm", FORCE, "shutoff", NOOP, "shutoff"),
    ("shutdown_vm", FORCE, "running", RAN, "shutoff"),
    ("shutdown_vm", FORCE, "paused", RAN, "shutoff"),
    ("destroy_vm", None, "undefined", GONE, "undefined"),
    ("destroy_vm", None, "shutoff", NOOP, "shutoff"),
    ("destroy_vm", None, "running", RAN, "shutoff"),
    ("destroy_vm", None, "paused", RAN, "shutoff"),
    ("reboot_vm", None, "undefined", GONE, "undefined"),
    ("reboot_vm", None, "shutoff", BAD, "shutoff"),
    ("reboot_vm", None, "running", RAN, "running"),
    ("reboot_vm", None, "paused", BAD, "paused"),
    ("pause_vm", None, "undefined", GONE, "undefined"),
    ("pause_vm", None, "shutoff", BAD, "shutoff"),
    ("pause_vm", None, "running", RAN, "paused"),
    ("pause_vm", None, "paused", NOOP, "paused"),
    ("resume_vm", None, "undefined", GONE, "undefined"),
    ("resume_vm", None, "shutoff", BAD, "shutoff"),
    ("resume_vm", None, "running", NOOP, "running"),
    ("resume_vm", None, "paused", RAN, "running"),
    ("undefine_vm", None, "undefined", NOOP, "undefined"),
    ("undefine_vm", None, "shutoff", RAN, "undefined"),
    ("undefine_vm", None, "running", BAD, "running"),
    ("undefine_vm", None, "paused", BAD, "paused"),
    ("undefine_vm", {"destroy": True}, "running", RAN, "undefined"),
    ("undefine_vm", {"destroy": True}, "paused", RAN, "undefined"),
    ("hibernate_vm", STATE_FILE, "undefined", GONE, "undefined"),
    ("hibernate_vm", STATE_FILE, "shutoff", BAD, "shutoff"),  # no state file there
    ("hibernate_vm", STATE_FILE, "running", RAN, "shutoff"),
    ("hibernate_vm", STATE_FILE, "paused", RAN, "shutoff"),
    ("dehibernate_vm", STATE_FILE, "running", NOOP, "running"),
    ("dehibernate_vm", STATE_FILE, "paused", BAD, "paused"),
    ("set_ticket", TICKET, "undefined", GONE, "undefined"),
    ("set_ticket", TICKET, "shutoff", BAD, "shutoff"),
]
# device ops change the persistent definition of a VM that is not running; its live domain
# (`live: true`, or `persistent: false` alone) only when it runs or is paused
for _op, _p in [
    ("set_vcpus", {"count": 2}),
    ("set_memory", {"memory_mib": 64}),
    ("attach_disk", DISK),
    ("detach_disk", {"target": "vdb"}),
    ("attach_nic", NIC),
    ("detach_nic", MAC),
    ("update_device", CDROM),
]:
    ROWS += [
        (_op, _p, "undefined", GONE, "undefined"),
        (_op, {**_p, "live": True}, "shutoff", BAD, "shutoff"),
        (_op, {**_p, "persistent": False}, "shutoff", BAD, "shutoff"),
    ]
# the test driver changes vCPUs and memory, not devices (tests/integration/test_qemu_devices.py),
# and the memory of a running domain only live or only persistent
for _op, _p, _live in [
    ("set_vcpus", {"count": 2}, {}),
    ("set_memory", {"memory_mib": 64}, {"persistent": False}),
]:
    ROWS += [
        (_op, _p, "shutoff", RAN, "shutoff"),
        (_op, {**_p, **_live}, "running", RAN, "running"),
        (_op, {**_p, **_live}, "paused", RAN, "paused"),
        (_op, {**_p, **_live, "live": True}, "running", RAN, "running"),
    ]


def _id(row: tuple[str, dict[str, Any] | None, str, str, str]) -> str:
    op, params, state, outcome, _ = row
    flags = "".join(f"+{k}" for k in params or {} if k in ("spec", "paused", "destroy", "live"))
    flags += "+persistent_false" if (params or {}).get("persistent") is False else ""
    return f"{op}{flags}-{state}-{outcome}"


def _put_in_state(conn: libvirt.virConnect, spec: dict[str, Any], state: str) -> None:
    if state == "undefined":
        return
    dom = conn.defineXML(build_domain_xml(VmSpec.model_validate(spec)))
    if state in ("running", "paused"):
        dom.create()
    if state == "paused":
        dom.suspend()
    assert domain_state(dom) == state


def _state_of(conn: libvirt.virConnect, vm_uuid: str) -> str:
    try:
        return domain_state(conn.lookupByUUIDString(vm_uuid))
    except libvirt.libvirtError:
        return "undefined"


@pytest.mark.parametrize("row", ROWS, ids=[_id(r) for r in ROWS])
def test_operation_in_each_state_says_what_happened(
    env, tap, start_worker, test_domains, hooks_root: Path, tmp_path: Path, row
):
    op, params, before, outcome, after = row
    params = dict(params or {})
    if params.get("path") == "TMP":
        params["path"] = str(tmp_path / "vm.save")
    point = f"before_{POINTS[op]}"
    (hooks_root / point).mkdir(mode=0o755)
    (hooks_root / point / "10_seen").write_text("#!/bin/sh\nexit 0\n")
    (hooks_root / point / "10_seen").chmod(0o755)
    start_worker()
    spec = {
        "uuid": str(uuid.uuid4()),
        "name": f"vmw-s-{uuid.uuid4().hex[:8]}",
        "vcpus": 1,
        "max_vcpus": 2,
        "memory_mib": 128,
    }
    test_domains.append(spec["uuid"])
    conn = libvirt.open("test:///default")
    _put_in_state(conn, spec, before)
    full = op == "define_vm" or params.pop("spec", False)
    vm = spec if full else {"uuid": spec["uuid"], "name": spec["name"]}

    rid = env.publish(op, vm, params=params or None)
    d = tap.wait_terminal(rid)["data"]
    ran_hooks = [h["point"] for h in d["hooks"]]
    assert [e["data"]["phase"] for e in tap.of(rid)] == ["before", d["phase"]]
    if outcome in (RAN, NOOP):
        assert d["phase"] == "after", d.get("error")
        assert d["noop"] is (outcome == NOOP)
        assert (point in ran_hooks) is (outcome == RAN)
    else:
        assert d["phase"] == "fail" and d["noop"] is False
        err = d["error"]
        assert (err["code"], err["source"], err["state"]) == (outcome, "libvirt", before), err
        assert before not in err["allowed"] and err["libvirt_code"] == (
            libvirt.VIR_ERR_NO_DOMAIN if outcome == GONE else libvirt.VIR_ERR_OPERATION_INVALID
        )
        assert point not in ran_hooks  # refused before the before_* chain
    assert d["state"] == after == _state_of(conn, spec["uuid"])
    if op == "set_vcpus" and outcome == RAN:  # the definition, and a live domain where one runs
        dom = conn.lookupByUUIDString(spec["uuid"])
        assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 2
        assert not dom.isActive() or dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2
