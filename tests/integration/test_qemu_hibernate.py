"""hibernate_vm, dehibernate_vm and set_ticket on a real qemu:///system libvirtd running a real
QEMU (kvm where /dev/kvm exists, TCG otherwise)."""

from __future__ import annotations

import calendar
import os
import time

import libvirt
import pytest
from lxml import etree

from handlers.base import domain_state
from tests.support import QEMU_URI, small_vm

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(120)]


def _do(env, tap, op, vm, params=None):  # type: ignore[no-untyped-def]
    rid = env.publish(op, vm, params=params)
    term = tap.wait_terminal(rid, timeout=60)
    assert [e["data"]["phase"] for e in tap.of(rid)] in (["before", "after"], ["before", "fail"])
    return term["data"]


def _qemu_pid(name: str) -> int | None:
    try:
        with open(f"/run/libvirt/qemu/{name}.pid") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def test_real_qemu_vm_is_saved_to_a_file_stopped_and_restored_from_it(
    env, tap, start_worker, qemu_domains, tmp_path
):
    env.libvirt_uri = QEMU_URI
    store = tmp_path / "store"
    store.mkdir()
    start_worker(storage_roots=[store])
    spec = small_vm("hib")
    qemu_domains.append(spec["uuid"])
    ref = {"uuid": spec["uuid"]}
    conn = libvirt.open(QEMU_URI)
    assert _do(env, tap, "start_vm", spec)["state"] == "running"
    before_pid = _qemu_pid(spec["name"])
    assert before_pid and os.path.exists(f"/proc/{before_pid}")

    saved = _do(env, tap, "hibernate_vm", ref)
    path = store / f"{spec['uuid']}.save"
    assert saved["phase"] == "after" and saved["state"] == "shutoff", saved.get("error")
    dom = conn.lookupByUUIDString(spec["uuid"])
    assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SAVED]
    assert not os.path.exists(f"/proc/{before_pid}")  # the memory is in the file, not in QEMU
    assert spec["uuid"] in conn.saveImageGetXMLDesc(str(path), 0)
    assert _do(env, tap, "hibernate_vm", ref)["noop"] is True

    back = _do(env, tap, "dehibernate_vm", ref)
    assert back["phase"] == "after" and back["state"] == "running", back.get("error")
    assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_RESTORED]
    assert back["state_file_removed"] is True and not path.exists()
    assert _do(env, tap, "dehibernate_vm", ref)["noop"] is True
    assert _do(env, tap, "destroy_vm", ref)["state"] == "shutoff"


def _display(dom: libvirt.virDomain) -> etree._Element:
    tree = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE).encode())
    g = tree.find("devices/graphics")
    assert g is not None
    return g


@pytest.mark.parametrize("kind", ["vnc", "spice"])
def test_set_ticket_sets_the_display_password_and_its_validity(
    env, tap, start_worker, qemu_domains, kind
):
    env.libvirt_uri = QEMU_URI
    start_worker()
    # QEMU takes a display password later only if the display started with one (VDSM too)
    spec = {**small_vm("tk"), "graphics": {"type": kind, "password": "initial"}}
    qemu_domains.append(spec["uuid"])
    ref = {"uuid": spec["uuid"]}
    _do(env, tap, "start_vm", spec)
    conn = libvirt.open(QEMU_URI)
    dom = conn.lookupByUUIDString(spec["uuid"])

    t0 = time.time()
    done = _do(env, tap, "set_ticket", ref, {"password": "Tk7x9q2b", "valid_s": 300})
    assert done["phase"] == "after" and done["graphics"] == [kind], done.get("error")
    g = _display(dom)
    assert g.get("passwd") == "Tk7x9q2b"
    valid_to = calendar.timegm(time.strptime(g.get("passwdValidTo"), "%Y-%m-%dT%H:%M:%S"))
    assert t0 + 300 - 5 <= valid_to <= time.time() + 300 + 1
    assert done["valid_to"] == g.get("passwdValidTo") + ".000Z"  # the events' time format

    params = {"password": "Tk0", "valid_s": 0, "connected": "fail"}
    forever = _do(env, tap, "set_ticket", ref, params)
    assert forever["phase"] == "after" and forever["valid_to"] is None, forever.get("error")
    g = _display(dom)
    assert g.get("passwd") == "Tk0" and g.get("passwdValidTo") is None
    if kind == "spice":
        assert g.get("connected") == "fail"

    if kind == "vnc":
        long = _do(env, tap, "set_ticket", ref, {"password": "nine-char"})
        assert (long["phase"], long["error"]["code"]) == ("fail", "password_too_long")
        assert _display(dom).get("passwd") == "Tk0"

    assert domain_state(dom) == "running"
    _do(env, tap, "destroy_vm", ref)
    off = _do(env, tap, "set_ticket", ref, {"password": "x"})
    assert (off["phase"], off["error"]["code"]) == ("fail", "bad_state")
