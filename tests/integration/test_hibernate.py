"""hibernate_vm / dehibernate_vm through the real worker and RabbitMQ on libvirt's test driver:
the memory goes to a state file under a storage root and comes back from it, the file is
removed after the restore, asking again is a noop, and a path is checked like a disk path."""

from __future__ import annotations

import os
import uuid

import libvirt
import pytest

from handlers.base import domain_state
from tests.support import broker_conn, small_vm, wait_depth, write_hook
from worker import events
from worker.journal import Journal

pytestmark = pytest.mark.timeout(90)


def _do(env, tap, op, vm, params=None, **kw):  # type: ignore[no-untyped-def]
    rid = env.publish(op, vm, params=params, **kw)
    term = tap.wait_terminal(rid)
    phases = [e["data"]["phase"] for e in tap.of(rid)]
    assert phases in (["before", "after"], ["before", "fail"]), phases
    return term["data"]


def test_hibernate_saves_and_stops_dehibernate_restores_and_removes_the_file(
    env, tap, start_worker, test_domains, tmp_path
):
    store = tmp_path / "store"
    store.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    for point in ("before_vm_hibernate", "after_vm_hibernate", "before_vm_dehibernate"):
        write_hook(env.hooks_root, point, "10_mark", f'#!/bin/sh\ntouch "{marks}/{point}"\n')
    start_worker(storage_roots=[store])
    spec = small_vm("hib", memory_mib=128)
    test_domains.append(spec["uuid"])
    ref = {"uuid": spec["uuid"]}
    conn = libvirt.open("test:///default")
    assert _do(env, tap, "start_vm", spec)["state"] == "running"

    saved = _do(env, tap, "hibernate_vm", ref)
    path = store / f"{spec['uuid']}.save"
    assert saved["phase"] == "after" and saved["state"] == "shutoff", saved.get("error")
    assert saved["state_file"] == str(path) and saved["noop"] is False
    assert domain_state(conn.lookupByUUIDString(spec["uuid"])) == "shutoff"
    assert spec["uuid"] in conn.saveImageGetXMLDesc(str(path), 0)
    assert {p.name for p in marks.iterdir()} == {"before_vm_hibernate", "after_vm_hibernate"}
    inode = path.stat().st_ino

    again = _do(env, tap, "hibernate_vm", ref)  # already saved: nothing saved again
    assert again["phase"] == "after" and again["noop"] is True
    assert path.stat().st_ino == inode

    back = _do(env, tap, "dehibernate_vm", ref)
    assert back["phase"] == "after" and back["state"] == "running", back.get("error")
    assert back["state_file_removed"] is True and not path.exists()
    assert domain_state(conn.lookupByUUIDString(spec["uuid"])) == "running"
    assert (marks / "before_vm_dehibernate").exists()

    noop = _do(env, tap, "dehibernate_vm", ref)
    assert noop["phase"] == "after" and noop["noop"] is True

    # a shut-off VM without a state file has nothing to hibernate or restore
    assert _do(env, tap, "destroy_vm", ref)["state"] == "shutoff"
    bad = _do(env, tap, "hibernate_vm", ref)
    assert (bad["phase"], bad["error"]["code"]) == ("fail", "bad_state")
    gone = _do(env, tap, "dehibernate_vm", ref)
    assert (gone["phase"], gone["error"]["code"]) == ("fail", "no_state_file")
    with broker_conn() as c:
        wait_depth(c, env.topology.dead_queue.name, 2)


def test_a_transient_vm_is_gone_once_saved_and_comes_back_from_its_file(
    env, tap, start_worker, test_domains, tmp_path
):
    from handlers.domxml import build_domain_xml
    from handlers.spec import VmSpec

    start_worker(storage_roots=[tmp_path])
    spec = small_vm("tr", memory_mib=128)
    test_domains.append(spec["uuid"])
    conn = libvirt.open("test:///default")
    conn.createXML(build_domain_xml(VmSpec.model_validate(spec)), 0)
    path = tmp_path / "vm.save"
    ref = {"uuid": spec["uuid"]}
    saved = _do(env, tap, "hibernate_vm", ref, {"path": str(path)})
    assert saved["phase"] == "after" and saved["state"] == "undefined", saved.get("error")
    assert _do(env, tap, "hibernate_vm", ref, {"path": str(path)})["noop"] is True
    back = _do(env, tap, "dehibernate_vm", ref, {"path": str(path)})
    assert back["phase"] == "after" and back["state"] == "running", back.get("error")
    assert not path.exists()


def test_the_state_file_path_is_checked_like_a_disk_path(
    env, tap, start_worker, test_domains, tmp_path
):
    store = tmp_path / "store"
    store.mkdir()
    start_worker(storage_roots=[store])
    spec = small_vm("path", memory_mib=128)
    test_domains.append(spec["uuid"])
    ref = {"uuid": spec["uuid"]}
    _do(env, tap, "start_vm", spec)
    outside = _do(env, tap, "hibernate_vm", ref, {"path": str(tmp_path / "vm.save")})
    assert outside["error"]["code"] == "path_outside_storage_roots"
    dotdot = _do(env, tap, "hibernate_vm", ref, {"path": f"{store}/../vm.save"})
    assert dotdot["error"]["source"] == "validation"
    disk = store / "disk.img"
    disk.write_bytes(b"a disk, not a state file")
    taken = _do(env, tap, "hibernate_vm", ref, {"path": str(disk)})
    assert taken["error"]["code"] == "path_in_use"
    assert disk.read_bytes() == b"a disk, not a state file"
    conn = libvirt.open("test:///default")
    assert domain_state(conn.lookupByUUIDString(spec["uuid"])) == "running"
    # another VM's state file is never restored as this one
    other = small_vm("other", memory_mib=128)
    test_domains.append(other["uuid"])
    _do(env, tap, "start_vm", other)
    foreign = store / "other.save"
    _do(env, tap, "hibernate_vm", {"uuid": other["uuid"]}, {"path": str(foreign)})
    _do(env, tap, "destroy_vm", ref)
    wrong = _do(env, tap, "dehibernate_vm", ref, {"path": str(foreign)})
    assert wrong["error"]["code"] == "wrong_state_file" and foreign.exists()
    assert domain_state(conn.lookupByUUIDString(spec["uuid"])) == "shutoff"


def test_a_hibernate_redelivered_after_its_save_completed_does_not_save_again(
    env, tap, start_worker, test_domains, tmp_path
):
    """What a worker killed between the save and its terminal event leaves: the request
    started in the journal, the VM saved. Redelivered, it ends in one `after`, no second save."""
    from handlers.domxml import build_domain_xml
    from handlers.spec import VmSpec

    spec = small_vm("rec", memory_mib=128)
    test_domains.append(spec["uuid"])
    conn = libvirt.open("test:///default")
    conn.defineXML(build_domain_xml(VmSpec.model_validate(spec)))
    dom = conn.lookupByUUIDString(spec["uuid"])
    dom.create()
    path = tmp_path / f"{spec['uuid']}.save"
    dom.save(str(path))  # the crashed run's save
    stamp = path.stat().st_mtime_ns, path.stat().st_ino
    rid = str(uuid.uuid4())
    j = Journal(env.state_dir / "journal.sqlite")
    try:
        j.receive(rid, "hibernate_vm", spec["uuid"])
        before = events.op_event(
            env.host,
            "hibernate_vm",
            "before",
            request_id=rid,
            correlation_id=None,
            vm_uuid=spec["uuid"],
            vm_name=None,
            redelivered=False,  # a `before` as the worker writes it
            recovered=False,
        )
        j.start(rid, before)
    finally:
        j.close()
    start_worker(storage_roots=[tmp_path])
    env.publish("hibernate_vm", {"uuid": spec["uuid"]}, request_id=rid)
    term = tap.wait_terminal(rid)["data"]
    assert term["phase"] == "after" and term["recovered"] is True and term["noop"] is True
    assert [e["data"]["phase"] for e in tap.of(rid)] == ["before", "after"]
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == stamp
    assert domain_state(dom) == "shutoff"
    os.unlink(path)


def test_a_dehibernate_redelivered_after_its_restore_removes_the_stale_file(
    env, tap, start_worker, test_domains, tmp_path
):
    """A worker killed between the restore and the file's removal leaves a running VM and its
    state file: restoring that file again would roll the guest back, so the noop removes it."""
    from handlers.domxml import build_domain_xml
    from handlers.spec import VmSpec

    spec = small_vm("stale", memory_mib=128)
    test_domains.append(spec["uuid"])
    conn = libvirt.open("test:///default")
    dom = conn.defineXML(build_domain_xml(VmSpec.model_validate(spec)))
    dom.create()
    path = tmp_path / f"{spec['uuid']}.save"
    dom.save(str(path))
    conn.restore(str(path))  # the crashed run's restore; the file is still there
    start_worker(storage_roots=[tmp_path])
    d = _do(env, tap, "dehibernate_vm", {"uuid": spec["uuid"]})
    assert d["phase"] == "after" and d["noop"] is True and d["state"] == "running"
    assert d["state_file_removed"] is True and not path.exists()
