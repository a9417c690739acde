"""State events: what libvirt reports that no operation asked for reaches the events exchange,
and what the worker's own operations cause is not published twice."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.support import QEMU_URI, small_vm, wait_for


def _state_events(tap: Any, vm_uuid: str) -> list[dict[str, Any]]:
    return [
        e
        for e in tap.events
        if e["type"].startswith("vmworker.state.") and e.get("subject") == vm_uuid
    ]


def _wait_state(tap: Any, vm_uuid: str, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    return tap.wait(
        lambda: len(_state_events(tap, vm_uuid)) >= n and _state_events(tap, vm_uuid), timeout
    )


def _wait_unclaimed(w: Any, vm_uuid: str) -> None:
    """Until the worker's claim on the VM (its operation, then a grace) is over: a change from
    outside is then no longer taken for the operation's own."""
    wait_for(lambda: w.service.ownership.owner(vm_uuid) is None, 10, "the claim to end")


def _virsh(*args: str) -> None:
    subprocess.run(["virsh", "-c", QEMU_URI, *args], check=True, capture_output=True, timeout=60)


def _words(evs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["data"]["state"], e["data"]["reason"]) for e in evs]


@pytest.mark.qemu
def test_changes_made_outside_the_worker_are_reported_and_its_own_are_not(
    env, tap, start_worker, qemu_domains
):
    w = start_worker(libvirt_uri=QEMU_URI)
    w.service.ownership.grace_s = 0.5  # default 2 s; locally libvirt's events lag by ms
    vm = small_vm("state")
    qemu_domains.append(vm["uuid"])

    # the worker starts it: defined/started/resumed are the op's own and are not published
    rid = env.publish("start_vm", vm)
    assert tap.wait_terminal(rid, 60)["data"]["phase"] == "after"
    _wait_unclaimed(w, vm["uuid"])

    # destroyed from outside: reported (libvirt says the host asked QEMU to stop, then stopped)
    _virsh("destroy", vm["uuid"])
    evs = _wait_state(tap, vm["uuid"], 2)
    assert _words(evs) == [("shutdown", "host"), ("stopped", "destroyed")]
    stopped = evs[-1]
    assert stopped["_routing_key"] == f"{env.host}.state.stopped"
    assert stopped["type"] == "vmworker.state.stopped"
    assert stopped["source"] == f"vmworker://{env.host}"
    d = stopped["data"]
    assert d["host"] == env.host and d["vm"] == {"uuid": vm["uuid"], "name": vm["name"]}
    assert d["domain_state"] == "shutoff" and "during_request" not in d

    # started with virsh: reported as booted
    _virsh("start", vm["uuid"])
    evs = _wait_state(tap, vm["uuid"], 4)
    assert ("started", "booted") in _words(evs[2:])

    # QEMU killed under it: a crash
    pid = int(Path(f"/run/libvirt/qemu/{vm['name']}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    evs = tap.wait(
        lambda: [e for e in _state_events(tap, vm["uuid"]) if e["data"]["state"] == "crashed"], 30
    )
    assert evs[0]["data"]["reason"] == "failed"
    assert evs[0]["_routing_key"] == f"{env.host}.state.crashed"
    seen = len(_state_events(tap, vm["uuid"]))

    # the worker's own start and destroy publish before/after only; then an outside start is
    # the next state event (libvirt's events are in order: nothing of the ops came before it)
    for op in ("start_vm", "destroy_vm"):
        rid = env.publish(op, {"uuid": vm["uuid"]})
        assert tap.wait_terminal(rid, 60)["data"]["phase"] == "after"
    _wait_unclaimed(w, vm["uuid"])
    _virsh("start", vm["uuid"])
    evs = _wait_state(tap, vm["uuid"], seen + 1)
    assert evs[seen]["data"]["state"] in ("resumed", "started")
    assert all(e["data"]["reason"] in ("unpaused", "booted") for e in evs[seen:])
    assert w.service.metrics.state_events.labels("stopped", "false")._value.get() >= 1


def test_a_change_during_an_operation_that_it_did_not_ask_for_is_published_with_its_request(
    env, tap, start_worker, test_domains, hooks_root
):
    point = hooks_root / "before_vm_pause"
    point.mkdir(mode=0o755)
    script = point / "50_slow"
    script.write_text("#!/bin/sh\nsleep 1\n")
    script.chmod(0o755)
    start_worker()
    vm = small_vm("during")
    test_domains.append(vm["uuid"])
    rid = env.publish("start_vm", vm)
    assert tap.wait_terminal(rid)["data"]["phase"] == "after"

    rid = env.publish("pause_vm", {"uuid": vm["uuid"]})
    tap.wait(lambda: [e for e in tap.of(rid) if e["data"]["phase"] == "before"])
    libvirt.open("test:///default").lookupByUUIDString(vm["uuid"]).destroy()  # not a pause
    tap.wait_terminal(rid)
    evs = _wait_state(tap, vm["uuid"], 1)
    assert _words(evs) == [("stopped", "destroyed")]
    assert evs[0]["data"]["during_request"] == rid
    # the start's own defined/started events were not published at all
    assert not [
        e for e in tap.events if e["type"] in ("vmworker.state.started", "vmworker.state.defined")
    ]


@pytest.mark.qemu
def test_state_events_resume_after_the_libvirt_connection_is_cut(
    env, tap, start_worker, qemu_domains
):
    w = start_worker(libvirt_uri=QEMU_URI)
    dom_events = w.service._domevents
    assert dom_events is not None and dom_events.connected.wait(10)
    vm = small_vm("recon")
    qemu_domains.append(vm["uuid"])
    from handlers.domxml import build_domain_xml
    from handlers.spec import VmSpec

    conn = libvirt.open(QEMU_URI)
    conn.createXML(build_domain_xml(VmSpec.model_validate(vm)), 0)  # transient, outside
    _wait_state(tap, vm["uuid"], 1)

    # libvirtd drops every connection of this process (as a libvirtd restart would)
    conn.close()
    out = subprocess.run(
        ["virt-admin", "srv-clients-list", "libvirtd"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    cut = 0
    for line in out.splitlines()[2:]:
        if not line.split():
            continue
        cid = line.split()[0]
        info = subprocess.run(
            ["virt-admin", "client-info", "libvirtd", cid],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        if f"unix_process_id: {os.getpid()}" in info:
            subprocess.run(
                ["virt-admin", "client-disconnect", "libvirtd", cid],
                capture_output=True,
                timeout=30,
            )
            cut += 1
    assert cut >= 1
    wait_for(lambda: dom_events.connects >= 2, 15, "a new subscription after the cut")
    assert dom_events.connected.wait(10)

    n = len(_state_events(tap, vm["uuid"]))
    _virsh("destroy", vm["uuid"])  # a transient domain: destroyed is gone
    evs = tap.wait(
        lambda: [e for e in _state_events(tap, vm["uuid"])[n:] if e["data"]["state"] == "stopped"],
        30,
    )
    assert evs[0]["data"]["reason"] == "destroyed"


def test_a_burst_of_outside_changes_is_reported_in_order_and_back_to_back_ops_publish_none(
    env, tap, start_worker, test_domains
):
    from handlers.domxml import build_domain_xml
    from handlers.spec import VmSpec

    start_worker()
    # two ops on one VM at once: the start's own events are read after the pause has begun
    # (the worker reads libvirt's events in batches); they are still the start's, not news
    vm = small_vm("b2b")
    test_domains.append(vm["uuid"])
    r1 = env.publish("start_vm", vm)
    r2 = env.publish("pause_vm", {"uuid": vm["uuid"]})
    assert tap.wait_terminal(r1)["data"]["phase"] == "after"
    assert tap.wait_terminal(r2)["data"]["phase"] == "after"

    # five domains defined and started outside the worker, as fast as libvirt goes
    conn = libvirt.open("test:///default")
    outside = [small_vm(f"burst{i}") for i in range(5)]
    for v in outside:
        test_domains.append(v["uuid"])
        conn.defineXML(build_domain_xml(VmSpec.model_validate(v)))
        conn.lookupByUUIDString(v["uuid"]).create()
    for v in outside:
        evs = _wait_state(tap, v["uuid"], 2)
        assert _words(evs) == [("defined", "added"), ("started", "booted")]
        assert evs[1]["data"]["domain_state"] == "running"
        assert evs[1]["data"]["vm"] == {"uuid": v["uuid"], "name": v["name"]}
    # events are read in order: the b2b VM's came before the burst's, and none was published
    assert _state_events(tap, vm["uuid"]) == []
