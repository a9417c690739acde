"""kill -9 of the worker around a real QEMU save: before it (the VM still runs, the restarted
worker saves it once) and after it (the VM is saved, the restarted worker does not save again).
Each request ends in exactly one `before` and one terminal event."""

from __future__ import annotations

import libvirt
import pytest

from handlers.base import domain_state
from handlers.domxml import build_domain_xml
from handlers.spec import VmSpec
from tests.reliability import finish_after_restart, kill_sleepers, tally, window_hooks
from tests.support import QEMU_URI, ProcessWorker, broker_conn, small_vm, wait_depth, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.qemu, pytest.mark.timeout(150)]


def test_kill9_before_and_after_the_save_hibernates_each_vm_once(
    env, tap, hooks_root, tmp_path, qemu_domains
):
    marks = tmp_path / "marks"
    marks.mkdir()
    store = tmp_path / "store"
    store.mkdir()
    window_hooks(hooks_root, "before_vm_hibernate", "after_vm_hibernate")
    conn = libvirt.open(QEMU_URI)
    a, b = small_vm("hka"), small_vm("hkb")  # a: killed before its save, b: after it
    qemu_domains.extend(v["uuid"] for v in (a, b))
    for v in (a, b):
        conn.defineXML(build_domain_xml(VmSpec.model_validate(v))).create()
    settings = dict(libvirt_uri=QEMU_URI, hook_timeout=60, storage_roots=[store])
    w = ProcessWorker(env, tmp_path / "worker.log", **settings).start()
    m = str(marks)
    path_b = store / f"{b['uuid']}.save"
    try:
        rid_a = env.publish(
            "hibernate_vm",
            {"uuid": a["uuid"]},
            custom={"mark_dir": m, "slow_before_vm_hibernate": "60"},
        )
        rid_b = env.publish(
            "hibernate_vm",
            {"uuid": b["uuid"]},
            custom={"mark_dir": m, "slow_after_vm_hibernate": "60"},
        )
        wait_for(lambda: (marks / f"before_vm_hibernate-{a['uuid']}").exists(), 30, "A's hook")
        wait_for(lambda: (marks / f"after_vm_hibernate-{b['uuid']}").exists(), 30, "B saved")
        assert domain_state(conn.lookupByUUIDString(a["uuid"])) == "running"
        assert domain_state(conn.lookupByUUIDString(b["uuid"])) == "shutoff"
        saved_b = path_b.stat().st_mtime_ns, path_b.stat().st_ino
        w.kill9()
        assert tap.terminal(rid_a) == [] and tap.terminal(rid_b) == []

        finish_after_restart(env, tap, tmp_path / "worker2.log", [rid_a, rid_b], **settings)
    finally:
        if w.proc is not None and w.proc.poll() is None:
            w.kill9()
        kill_sleepers(marks)
    t = tally(tap.events, [rid_a, rid_b])
    assert t["lost"] == [] and t["twice"] == [] and t["no_before"] == []
    (term_a,) = tap.terminal(rid_a)
    (term_b,) = tap.terminal(rid_b)
    assert term_a["data"]["phase"] == "after" and term_a["data"]["noop"] is False
    assert term_b["data"]["phase"] == "after" and term_b["data"]["noop"] is True
    assert term_a["data"]["recovered"] is term_b["data"]["recovered"] is True
    assert (path_b.stat().st_mtime_ns, path_b.stat().st_ino) == saved_b  # not saved twice
    for v in (a, b):
        assert domain_state(conn.lookupByUUIDString(v["uuid"])) == "shutoff"
        assert v["uuid"] in conn.saveImageGetXMLDesc(str(store / f"{v['uuid']}.save"), 0)
    with broker_conn() as bc:
        wait_depth(bc, env.topology.host_queue.name, 0)
