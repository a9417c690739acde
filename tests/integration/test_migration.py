"""Live migration between two real libvirt hosts (the second one: tests/hosts.py) with real QEMU,
through two real workers and RabbitMQ: both hosts' hook chains, the events, cancel, and each
failure mode of docs/protocol.md's Migration section."""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.hosts import TwoHosts, private_libvirtds, where
from tests.support import Env, EventTap, write_hook

pytestmark = [pytest.mark.qemu, pytest.mark.migration]

SOURCE_POINTS = (
    "before_vm_migrate_source",
    "after_vm_migrate_source",
    "after_vm_migrate_source_fail",
)
DEST_POINTS = (
    "before_vm_migrate_destination",
    "after_vm_migrate_destination",
    "after_vm_migrate_destination_fail",
)


@pytest.fixture
def disk(two_hosts: TwoHosts, tmp_path: Path) -> Iterator[Any]:
    """disk(directory, mib) -> the path of a new qcow2 image full of random data (a guest's
    data is not zeros, which migrate for free); removed at the end, and the copies a
    migration made on host b's own /var/lib/libvirt."""
    made: list[Path] = []

    def make(directory: Path, mib: int) -> str:
        directory.mkdir(parents=True, exist_ok=True)
        raw = tmp_path / f"{uuidlib.uuid4().hex}.raw"
        raw.write_bytes(os.urandom(mib << 20))
        path = directory / f"vmw-test-{uuidlib.uuid4().hex[:10]}.qcow2"
        made.append(path)
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        raw.unlink()
        return str(path)

    yield make
    for path in made:
        path.unlink(missing_ok=True)
        if path.is_relative_to("/var/lib/libvirt"):
            (two_hosts.b_root / path.relative_to("/var/lib/libvirt")).unlink(missing_ok=True)


@pytest.fixture
def hosts_up(two_hosts: TwoHosts) -> TwoHosts:
    """two_hosts with both workers started (threads, default settings)."""
    two_hosts.start_both()
    return two_hosts


LOCAL = Path("/var/lib/libvirt/images")  # each host's own (host b's is in its mount namespace)


def dirty_guest_memory(name: str, mib: int) -> None:
    """Random data from 4 MiB on in a 64 MiB guest's RAM (on the first host; below what the
    firmware uses at either end), written
    through its QEMU's /proc/<pid>/mem: a guest without an OS has RAM of zeros, which
    migrates at once whatever the bandwidth."""
    pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
    ram = [
        int(m[1], 16)
        for m in re.finditer(
            r"^([0-9a-f]+)-([0-9a-f]+) rw-p 00000000 00:00 0\s*$",
            Path(f"/proc/{pid}/maps").read_text(),
            re.M,
        )
        if int(m[2], 16) - int(m[1], 16) == 64 << 20
    ]
    assert len(ram) == 1, "the guest's RAM mapping"
    with open(f"/proc/{pid}/mem", "r+b") as mem:
        mem.seek(ram[0] + (4 << 20))
        mem.write(os.urandom(mib << 20))


def hook(root: Path, point: str, name: str, body: str) -> None:
    write_hook(root, point, name, "#!/bin/sh\n" + body + "\n")


def destination_hook(h: TwoHosts, name: str, body: str) -> None:
    """A shell script of host b's before_vm_migrate_destination chain."""
    hook(h.hooks[h.b], "before_vm_migrate_destination", name, body)


def log_hooks(h: TwoHosts, log: Path) -> None:
    """Every migration chain of both hosts appends `<host> <point>` to `log`."""
    for host in (h.a, h.b):
        for point in (*SOURCE_POINTS, *DEST_POINTS):
            hook(h.hooks[host], point, "50_log", f'echo "{host} {point}" >> {log}')


def migrate(env: Env, h: TwoHosts, vm: dict[str, Any], to: str, **params: Any) -> str:
    src = h.a if to == h.b else h.b
    return env.publish(
        "migrate_vm", {"uuid": vm["uuid"]}, params={"destination": to, **params}, routing_key=src
    )


def of_type(tap: EventTap, rk: str, rid: str) -> list[dict[str, Any]]:
    """Events with routing key `rk` of request `rid`, or correlated with it (the
    destination's parts of migration `rid`)."""
    return [
        e
        for e in list(tap.events)
        if e["_routing_key"] == rk and rid in (e.get("requestid"), e["data"].get("correlation_id"))
    ]


def inventory(tap: EventTap, host: str, uuid: str) -> str | None:
    """The VM's state in `host`'s newest inventory ('absent' when it is not listed; None before
    any inventory). An inventory is sent when it changes: the newest one is the host's now
    (it may come before or after the event of the operation that changed it)."""
    beats = [e for e in list(tap.events) if e["_routing_key"] == f"{host}.host.inventory"]
    if not beats:
        return None
    listed = {d["uuid"]: d["state"] for d in beats[-1]["data"].get("domains") or []}
    return listed.get(uuid, "absent")


def state_events(tap: EventTap, uuid: str) -> list[tuple[str, str]]:
    return [
        (e["_routing_key"], e["data"].get("reason", ""))
        for e in list(tap.events)
        if ".state." in e["_routing_key"] and e.get("subject") == uuid
    ]


def test_a_running_vm_moves_to_the_other_host_and_back_with_each_hosts_chains(
    env: Env, tap: EventTap, two_hosts: TwoHosts, tmp_path: Path
) -> None:
    h = two_hosts
    log = tmp_path / "chains.log"
    log_hooks(h, log)
    h.start_both(heartbeat_interval=1)
    vm = h.running_vm(tap, "mig")
    tap.wait(lambda: inventory(tap, h.a, vm["uuid"]) == "running", 10)

    rid = migrate(env, h, vm, h.b)
    term = tap.wait_terminal(rid, 120)["data"]
    assert term["phase"] == "after", term.get("error")
    # the inventories, which tell anyone where a VM runs, move it too
    tap.wait(lambda: inventory(tap, h.b, vm["uuid"]) == "running", 10)
    tap.wait(lambda: inventory(tap, h.a, vm["uuid"]) == "absent", 10)
    assert term["destination"] == h.b and term["host"] == h.a
    phases = [(e["data"]["phase"], e["data"]["destination"]) for e in tap.of(rid)]
    assert [p for p in phases if p[0] != "progress"] == [("before", h.b), ("after", h.b)]
    assert where(h, vm["uuid"]) == {h.a: "undefined", h.b: "running"}
    conn_b = libvirt.open(h.uri[h.b])
    assert conn_b.lookupByUUIDString(vm["uuid"]).isPersistent()
    conn_b.close()
    # the destination's part: its own events, correlated with the migration request
    tap.wait(lambda: of_type(tap, f"{h.b}.finish_incoming.after", rid), 30)
    assert of_type(tap, f"{h.b}.prepare_incoming.after", rid)
    lines = log.read_text().splitlines()
    assert lines[:2] == [f"{h.a} before_vm_migrate_source", f"{h.b} before_vm_migrate_destination"]
    # each host's after chain: the source's and the destination's run at once
    assert sorted(lines[2:]) == sorted(
        [f"{h.a} after_vm_migrate_source", f"{h.b} after_vm_migrate_destination"]
    )
    log.write_text("")

    back = migrate(env, h, vm, h.a)
    term = tap.wait_terminal(back, 120)["data"]
    assert term["phase"] == "after", term.get("error")
    assert term["destination"] == h.a and term["host"] == h.b
    assert where(h, vm["uuid"]) == {h.a: "running", h.b: "undefined"}
    tap.wait(lambda: of_type(tap, f"{h.a}.finish_incoming.after", back), 30)
    assert sorted(log.read_text().splitlines()) == sorted(
        [
            f"{h.b} before_vm_migrate_source",
            f"{h.a} before_vm_migrate_destination",
            f"{h.b} after_vm_migrate_source",
            f"{h.a} after_vm_migrate_destination",
        ]
    )
    # neither host reported its half of either migration as a change nobody asked for
    assert state_events(tap, vm["uuid"]) == []


def test_the_destinations_veto_leaves_the_vm_running_untouched_on_the_source(
    env: Env, tap: EventTap, hosts_up: TwoHosts
) -> None:
    h = hosts_up
    destination_hook(h, "10_policy", 'echo "policy: host is full" >&2; exit 2')
    vm = h.running_vm(tap, "veto")
    conn = libvirt.open(h.uri[h.a])
    qemu_id = conn.lookupByUUIDString(vm["uuid"]).ID()

    rid = migrate(env, h, vm, h.b)
    fail = tap.wait_terminal(rid, 90)["data"]
    assert fail["phase"] == "fail"
    assert fail["error"]["code"] == "hook_failed"
    assert "policy: host is full" in fail["error"]["stderr"]
    assert fail["destination"] == h.b
    assert where(h, vm["uuid"]) == {h.a: "running", h.b: "undefined"}
    assert conn.lookupByUUIDString(vm["uuid"]).ID() == qemu_id  # the same QEMU, never paused
    conn.close()
    assert of_type(tap, f"{h.b}.prepare_incoming.fail", rid)


def test_a_destination_whose_libvirtd_is_down_fails_fast_and_the_vm_stays(
    env: Env, tap: EventTap, two_hosts: TwoHosts
) -> None:
    h = two_hosts
    # a third libvirt host, stopped: its socket is there, nothing answers on it
    with private_libvirtds("hostc", None) as (dead,):
        dead.stop()
        base = dead.base
        h.start(h.a)
        vm = h.running_vm(tap, "down")
        t0 = time.monotonic()
        rid = migrate(env, h, vm, h.b, destination_uri=dead.uri)
        fail = tap.wait_terminal(rid, 60)["data"]
        elapsed = time.monotonic() - t0
    assert elapsed < 10
    assert fail["phase"] == "fail"
    assert fail["error"]["code"] == "destination_unreachable"
    assert h.b in fail["error"]["message"] and str(base) in fail["error"]["message"]
    assert where(h, vm["uuid"])[h.a] == "running"
    assert not of_type(tap, f"{h.b}.prepare_incoming.after", rid)  # nothing was asked of it


def test_a_finished_migration_delivered_again_is_its_recorded_outcome_marked_duplicate(
    env: Env, tap: EventTap, hosts_up: TwoHosts
) -> None:
    h = hosts_up
    vm = h.running_vm(tap, "dup")
    rid = migrate(env, h, vm, h.b)
    first = tap.wait_terminal(rid, 120)
    assert first["data"]["phase"] == "after", first["data"].get("error")

    env.publish(
        "migrate_vm",
        {"uuid": vm["uuid"]},
        params={"destination": h.b},
        routing_key=h.a,
        request_id=rid,
    )
    dup = tap.wait(
        lambda: [
            e for e in tap.terminal(rid, include_duplicates=True) if e["data"].get("duplicate")
        ]
    )[0]["data"]
    assert dup["phase"] == "after" and dup["original_event_id"] == first["id"]
    assert where(h, vm["uuid"]) == {h.a: "undefined", h.b: "running"}
    assert len([e for e in tap.of(rid) if e["data"]["phase"] == "before"]) == 1
    # another request for the VM already moved: a noop, which tells the destination nothing
    again = tap.wait_terminal(migrate(env, h, vm, h.b), 60)["data"]
    assert again["phase"] == "after" and again["noop"] is True
    assert "destination_told" not in again


def test_cancel_aborts_a_running_migration_without_waiting_behind_it(
    env: Env, tap: EventTap, hosts_up: TwoHosts, disk: Any
) -> None:
    h = hosts_up
    vm = h.running_vm(tap, "cancel", disks=[{"path": disk(LOCAL, 32)}])
    # 1 MiB/s: a 32 MiB local disk takes half a minute to copy, time enough to cancel
    rid = migrate(env, h, vm, h.b, bandwidth_mib_s=1, copy_storage="all")
    progress = tap.wait(
        lambda: [
            e
            for e in of_type(tap, f"{h.a}.migrate_vm.progress", rid)
            if e["data"]["progress"]["data_total_bytes"] > 0
        ],
        60,
    )[0]
    p = progress["data"]["progress"]
    assert p["data_total_bytes"] >= 32 << 20 and 0 <= p["percent"] <= 100
    assert progress["requestid"] == rid and progress["data"]["destination"] == h.b

    cancel = env.publish("cancel_migration", {"uuid": vm["uuid"]}, routing_key=h.a)
    cancelled = tap.wait_terminal(cancel, 20)
    assert cancelled["data"]["phase"] == "after", cancelled["data"].get("error")
    fail = tap.wait_terminal(rid, 60)
    assert fail["data"]["phase"] == "fail"
    assert fail["data"]["error"]["code"] == "cancelled"
    assert where(h, vm["uuid"]) == {h.a: "running", h.b: "undefined"}
    # at most one progress event a second
    times = [e["time"] for e in of_type(tap, f"{h.a}.migrate_vm.progress", rid)]
    assert len(times) == len(set(t[:19] for t in times))
    # the destination was told: its fail chain's event
    tap.wait(lambda: of_type(tap, f"{h.b}.finish_incoming.fail", rid), 30)
    # nothing left to cancel: said so
    again = env.publish("cancel_migration", {"uuid": vm["uuid"]}, routing_key=h.a)
    nothing = tap.wait_terminal(again, 20)["data"]
    assert nothing["phase"] == "fail" and nothing["error"]["code"] == "no_migration"


def test_a_migration_past_its_timeout_is_aborted_and_the_vm_stays(
    env: Env, tap: EventTap, hosts_up: TwoHosts, disk: Any
) -> None:
    h = hosts_up
    vm = h.running_vm(tap, "timeout", disks=[{"path": disk(LOCAL, 32)}])
    rid = migrate(env, h, vm, h.b, bandwidth_mib_s=1, timeout_s=3, copy_storage="all")
    fail = tap.wait_terminal(rid, 60)["data"]
    assert fail["phase"] == "fail" and fail["error"]["code"] == "timeout"
    assert where(h, vm["uuid"]) == {h.a: "running", h.b: "undefined"}


def test_a_migration_past_its_timeout_switches_to_postcopy_when_asked(
    env: Env, tap: EventTap, hosts_up: TwoHosts
) -> None:
    h = hosts_up
    vm = h.running_vm(tap, "postcopy")
    dirty_guest_memory(vm["name"], 24)  # 24 s at 1 MiB/s: past the timeout, post-copy ends it
    rid = migrate(env, h, vm, h.b, bandwidth_mib_s=1, timeout_s=2, postcopy=True)
    term = tap.wait_terminal(rid, 90)["data"]
    assert term["phase"] == "after", term.get("error")
    assert term["postcopy"] is True
    assert where(h, vm["uuid"]) == {h.a: "undefined", h.b: "running"}


def test_a_vm_with_a_qcow2_disk_on_shared_storage_moves_and_keeps_its_disk(
    env: Env, tap: EventTap, hosts_up: TwoHosts, disk: Any, tmp_path: Path
) -> None:
    h = hosts_up
    log = tmp_path / "devices.log"
    for point in ("before_device_migrate_destination", "after_device_migrate_destination"):
        hook(h.hooks[h.b], point, "50_log", f'echo "{point} $migtag" >> {log}')
    path = disk(tmp_path / "shared", 8)  # a directory both hosts see: shared storage
    vm = h.running_vm(tap, "shared", disks=[{"path": path, "custom": {"migtag": "d1"}}])
    # libvirt knows NFS, Ceph, GFS2... as shared, not one ext4 both hosts see: `unsafe` says it
    rid = migrate(env, h, vm, h.b, unsafe=True)
    term = tap.wait_terminal(rid, 120)["data"]
    assert term["phase"] == "after", term.get("error")
    assert where(h, vm["uuid"]) == {h.a: "undefined", h.b: "running"}
    conn = libvirt.open(h.uri[h.b])
    assert path in conn.lookupByUUIDString(vm["uuid"]).XMLDesc(0)
    conn.close()
    # the destination ran its device chains for the disk, with the disk's custom properties
    tap.wait(lambda: of_type(tap, f"{h.b}.finish_incoming.after", rid), 30)
    assert log.read_text().splitlines() == [
        "before_device_migrate_destination d1",
        "after_device_migrate_destination d1",
    ]


def test_a_vm_with_a_local_disk_moves_with_its_disk_copied(
    env: Env, tap: EventTap, hosts_up: TwoHosts, disk: Any
) -> None:
    h = hosts_up
    path = disk(LOCAL, 4)
    vm = h.running_vm(tap, "local", disks=[{"path": path}])
    rid = migrate(env, h, vm, h.b, copy_storage="all")
    term = tap.wait_terminal(rid, 120)["data"]
    assert term["phase"] == "after", term.get("error")
    assert where(h, vm["uuid"]) == {h.a: "undefined", h.b: "running"}
    # host b's own copy, in its own /var/lib/libvirt: the same guest data
    copy = h.b_root / Path(path).relative_to("/var/lib/libvirt")
    assert copy.exists()
    conn = libvirt.open(h.uri[h.b])
    conn.lookupByUUIDString(vm["uuid"]).destroy()  # nothing writes to it while it is compared
    conn.close()
    same = subprocess.run(
        ["qemu-img", "compare", "-q", path, str(copy)], capture_output=True, timeout=60
    )
    assert same.returncode == 0, same.stderr


def test_params_and_the_destinations_edit_reach_libvirt(
    env: Env, tap: EventTap, hosts_up: TwoHosts
) -> None:
    h = hosts_up
    edit = "sed -i 's#</name>#</name><description>placed by host b</description>#'"
    destination_hook(h, "50_describe", f'{edit} "$_hook_domxml"')
    vm = h.running_vm(tap, "params")
    rid = migrate(
        env,
        h,
        vm,
        h.b,
        auto_converge=True,
        max_downtime_ms=100,
        persist_destination=False,
        undefine_source=False,
    )
    term = tap.wait_terminal(rid, 120)["data"]
    assert term["phase"] == "after", term.get("error")
    assert term["state"] == "shutoff"  # kept defined on the source
    assert where(h, vm["uuid"]) == {h.a: "shutoff", h.b: "running"}
    conn = libvirt.open(h.uri[h.b])
    dom = conn.lookupByUUIDString(vm["uuid"])
    assert not dom.isPersistent()  # not made persistent on the destination
    assert "placed by host b" in dom.XMLDesc(0)  # what the destination's hook accepted
    conn.close()
    prepared = of_type(tap, f"{h.b}.prepare_incoming.after", rid)[0]["data"]
    assert "placed by host b" in prepared["accepted_xml"]
