"""The lifecycle on a real qemu:///system libvirtd running a real QEMU (kvm where /dev/kvm
exists, TCG otherwise): start, pause, resume, shutdown with force, destroy, undefine."""

from __future__ import annotations

import os

import libvirt
import pytest

from handlers.base import domain_state
from tests.support import QEMU_URI, small_vm

pytestmark = pytest.mark.qemu


def _do(env, tap, op, vm, params=None):  # type: ignore[no-untyped-def]
    rid = env.publish(op, vm, params=params)
    term = tap.wait_terminal(rid, timeout=60)
    assert [e["data"]["phase"] for e in tap.of(rid)] == ["before", "after"], term["data"].get(
        "error"
    )
    return term["data"]


def test_real_qemu_domain_through_every_lifecycle_op(env, tap, start_worker, qemu_domains):
    env.libvirt_uri = QEMU_URI
    start_worker()
    spec = small_vm("life")
    qemu_domains.append(spec["uuid"])
    ref = {"uuid": spec["uuid"]}
    conn = libvirt.open(QEMU_URI)

    assert _do(env, tap, "start_vm", spec)["state"] == "running"
    dom = conn.lookupByUUIDString(spec["uuid"])
    assert dom.isActive() and dom.isPersistent()
    want = "kvm" if os.path.exists("/dev/kvm") else "qemu"
    assert f"type='{want}'" in dom.XMLDesc(0) or f'type="{want}"' in dom.XMLDesc(0)
    pid_file = f"/run/libvirt/qemu/{spec['name']}.pid"
    with open(pid_file) as f:
        qemu_pid = int(f.read().strip())
    assert os.path.exists(f"/proc/{qemu_pid}")

    assert _do(env, tap, "pause_vm", ref)["state"] == "paused"
    assert domain_state(dom) == "paused"
    assert _do(env, tap, "resume_vm", ref)["state"] == "running"
    assert domain_state(dom) == "running"

    # a diskless guest has no OS to answer ACPI: force destroys it after the timeout
    d = _do(env, tap, "shutdown_vm", ref, {"timeout": 1, "force": True})
    assert d["state"] == "shutoff" and d.get("forced") is True
    assert not dom.isActive()
    assert not os.path.exists(f"/proc/{qemu_pid}")

    assert _do(env, tap, "start_vm", ref)["state"] == "running"
    assert _do(env, tap, "destroy_vm", ref)["state"] == "shutoff"
    assert not dom.isActive()
    assert _do(env, tap, "undefine_vm", ref)["state"] == "undefined"
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByUUIDString(spec["uuid"])


def test_shutdown_without_force_times_out_and_fails(env, tap, start_worker, qemu_domains):
    env.libvirt_uri = QEMU_URI
    start_worker()
    spec = small_vm("noforce")
    qemu_domains.append(spec["uuid"])
    _do(env, tap, "start_vm", spec)
    rid = env.publish("shutdown_vm", {"uuid": spec["uuid"]}, params={"timeout": 1})
    fail = tap.wait_terminal(rid, timeout=30)["data"]
    assert fail["phase"] == "fail"
    assert fail["error"]["source"] == "timeout" and fail["error"]["code"] == "shutdown_timeout"
    assert fail["state"] == "running"
