"""FleetView: the monitor's picture, folded from events (no broker: events built by hand)."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from worker import events
from worker.monitor import FleetView, render

VM = "11111111-2222-3333-4444-555555555555"


def _at(ev: dict, t: float) -> dict:
    ev["time"] = datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
    return ev


def _beat(host: str, t: float, *, kind: str = "heartbeat", domains=None, interval=10.0) -> dict:
    data = {
        "host": host,
        "interval_s": interval,
        "worker": {"version": "1.2.3"},
        "libvirt": {"version": "9.0.0", "hypervisor": "QEMU", "hypervisor_version": "7.2.0"},
        "domains": domains or [],
        "hooks": {"before_vm_start": [{"name": "50_x"}]},
        "queue_depth": 0,
        "outbox": 0,
    }
    return _at(
        events.cloud_event(host, ("host", kind), subject=None, request_id=None, data=data), t
    )


def _op(phase: str, t: float, *, op="start_vm", state="running", rid="r1", **extra) -> dict:
    _, ev = events.op_event(
        "h1",
        op,
        phase,
        request_id=rid,
        correlation_id=None,
        vm_uuid=VM,
        vm_name="web-1",
        state=state,
        **extra,
    )
    return _at(ev, t)


def _state(word: str, reason: str, dom_state: str, t: float) -> dict:
    data = {
        "host": "h1",
        "vm": {"uuid": VM, "name": "web-1"},
        "state": word,
        "reason": reason,
        "domain_state": dom_state,
    }
    return _at(events.cloud_event("h1", ("state", word), subject=VM, request_id=None, data=data), t)


def test_a_host_whose_heartbeat_is_overdue_is_late_and_an_offline_one_is_not():
    view = FleetView()
    view.apply(_beat("h1", 1000.0))
    view.apply(_beat("h2", 1000.0))
    view.apply(
        _at(
            events.cloud_event(
                "h2", ("host", "offline"), subject=None, request_id=None, data={"host": "h2"}
            ),
            1001.0,
        )
    )
    assert view.late_hosts(1020.0) == []  # 2 intervals: not yet
    assert view.late_hosts(1030.0) == ["h1"]
    text = _screen(view, 1030.0)
    assert "LATE" in text and "offline" in text


def test_an_op_sets_last_operation_and_state_and_a_failure_keeps_the_hooks_stderr():
    view = FleetView()
    view.apply(_op("before", 10.0))
    assert view.vms[VM].result == "running"
    err = {
        "code": "hook_failed",
        "message": "before_vm_start: 50_x failed (rc=2)",
        "source": "hook",
        "hook": "50_x",
        "stderr": "[50_x: rc=2] no bridge br-storage",
    }
    view.apply(_op("fail", 11.0, state="shutoff", error=err))
    vm = view.vms[VM]
    assert (vm.last_op, vm.result, vm.state) == ("start_vm", "failed", "shutoff")
    [f] = view.failures
    assert f.hook == "50_x" and "no bridge br-storage" in (f.stderr or "")
    assert "no bridge br-storage" in _screen(view, 12.0)


def test_a_failing_after_hook_is_listed_with_its_own_stderr():
    view = FleetView()
    hooks = [
        {
            "point": "after_vm_destroy_fail",
            "name": "60_page",
            "rc": 1,
            "stderr_tail": "pager unreachable",
        }
    ]
    view.apply(
        _op(
            "fail",
            5.0,
            op="destroy_vm",
            error={"code": "x", "message": "m", "source": "libvirt"},
            hooks=hooks,
        )
    )
    [f] = view.failures
    assert f.hook == "60_page" and f.stderr == "pager unreachable"


def test_events_apply_once_and_an_older_or_duplicate_outcome_does_not_roll_state_back():
    view = FleetView()
    after = _op("after", 20.0, state="running")
    assert view.apply(after) and not view.apply(after)  # the same event id twice
    view.apply(_state("stopped", "destroyed", "shutoff", 30.0))
    dup = events.as_duplicate(after, redelivered=False)
    view.apply(_at(dup, 40.0))
    vm = view.vms[VM]
    assert vm.state == "shutoff" and vm.result == "duplicate"
    assert vm.last_change == "stopped (destroyed)"
    view.apply(_op("after", 15.0, op="define_vm", state="shutoff", rid="old"))
    assert vm.last_op == "start_vm"  # an older op, seen late, is not the last one


def test_a_heartbeat_lists_domains_and_a_vm_missing_from_it_is_gone():
    view = FleetView()
    view.apply(_beat("h1", 100.0, domains=[{"uuid": VM, "name": "web-1", "state": "running"}]))
    assert view.vms[VM].state == "running" and view.hosts["h1"].domains == 1
    assert view.hosts["h1"].hooks == 1
    view.apply(_beat("h1", 110.0, domains=[]))
    assert view.vms[VM].state == "undefined"


def _screen(view: FleetView, now: float, **kw) -> str:
    console = Console(record=True, width=200)
    console.print(render(view, now, **kw))
    return console.export_text()


def test_a_heartbeat_that_confirms_a_state_does_not_move_when_it_changed():
    view = FleetView()
    view.apply(_state("started", "booted", "running", 50.0))
    view.apply(_beat("h1", 60.0, domains=[{"uuid": VM, "name": "web-1", "state": "running"}]))
    vm = view.vms[VM]
    assert (vm.state, vm.changed_at, vm.state_at) == ("running", 50.0, 60.0)
    view.apply(_state("paused", "ioerror", "paused", 55.0))  # older than what we know
    assert vm.state == "running" and vm.last_change == "started (booted)"


def test_a_host_that_missed_three_heartbeats_is_down_and_its_vms_unknown():
    view = FleetView()
    running = [{"uuid": VM, "name": "web-1", "state": "running"}]
    view.apply(_beat("h1", 1000.0, domains=running, interval=10.0))
    host, vm = view.hosts["h1"], view.vms[VM]
    assert view.status(host, 1026.0) == "late" and view.vm_state(vm, 1026.0) == "running"
    assert view.late_hosts(1034.0) == ["h1"] and view.down_hosts(1034.0) == []
    assert view.status(host, 1036.0) == "down"  # 3 beats (and half an interval) missed
    assert view.down_hosts(1036.0) == ["h1"] and view.late_hosts(1036.0) == []
    assert view.vm_state(vm, 1036.0) == "unknown"
    text = _screen(view, 1036.0, depths={"h1": 3})
    [host_line] = [line for line in text.splitlines() if "DOWN" in line and "1.2.3" in line]
    assert " 3 " in host_line  # the broker's depth, not the heartbeat's 0
    [vm_line] = [line for line in text.splitlines() if "web-1" in line]
    assert "unknown" in vm_line and "running" not in vm_line
    assert "?" in _screen(view, 1036.0).split("1.2.3")[1].splitlines()[0]  # depth not read
    view.apply(_beat("h1", 1040.0, domains=running, interval=10.0))  # it came back
    assert view.status(host, 1041.0) == "online" and view.vm_state(vm, 1041.0) == "running"


def test_a_host_that_said_goodbye_is_offline_not_down():
    view = FleetView()
    view.apply(_beat("h1", 1000.0, domains=[{"uuid": VM, "name": "web-1", "state": "running"}]))
    offline = events.cloud_event(
        "h1", ("host", "offline"), subject=None, request_id=None, data={"host": "h1"}
    )
    view.apply(_at(offline, 1001.0))
    assert view.status(view.hosts["h1"], 5000.0) == "offline"
    assert view.vm_state(view.vms[VM], 5000.0) == "running"
    assert view.stale_depth_hosts(5000.0) == ["h1"]  # nobody consumes its queue
    [host_line] = [
        ln for ln in _screen(view, 5000.0, depths={"h1": 7}).splitlines() if "1.2.3" in ln
    ]
    assert "offline" in host_line and " 7 " in host_line
