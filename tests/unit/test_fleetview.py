"""FleetView: the monitor's picture, folded from events (no broker: events built by hand)."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from worker import events
from worker.monitor import FleetView, progress_line, render

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


# -- heartbeats with a digest, inventories, and what the view shows first ----------------------
def _host_ev(host: str, kind: str, t: float, **data) -> dict:
    ev = events.cloud_event(host, ("host", kind), subject=None, request_id=None,
                            data={"host": host, **data})  # fmt: skip
    return _at(ev, t)


def _vm_uuid(i: int) -> str:
    return f"00000000-0000-0000-0000-{i:012d}"


def _inventory(host: str, t: float, digest: str, domains: list[dict]) -> dict:
    return _host_ev(host, "inventory", t, reason="changed", inventory_digest=digest,
                    libvirt={"uri": "qemu:///system", "version": "9.0.0"},
                    domains=domains, hooks={"before_vm_start": [{"name": "50_x"}]})  # fmt: skip


def _new_beat(host: str, t: float, digest: str, total: int, **more) -> dict:
    return _host_ev(host, "heartbeat", t, interval_s=10.0, inventory_digest=digest,
                    worker={"version": "2.0.0"}, vms={"total": total, "by_state": {}},
                    queue_depth=0, outbox=0, **more)  # fmt: skip


def test_the_inventory_event_lists_the_vms_and_a_heartbeat_naming_another_shows_it_stale():
    view = FleetView()
    view.apply(_inventory("h1", 100.0, "sha256:a", [{"uuid": VM, "name": "web-1",
                                                     "state": "running"}]))  # fmt: skip
    view.apply(_new_beat("h1", 100.1, "sha256:a", 1, memory={"total_mib": 8, "free_mib": 4}))
    host = view.hosts["h1"]
    assert view.vms[VM].state == "running" and host.domains == 1 and host.hooks == 1
    assert host.free_mib == 4 and not host.stale
    assert "stale" not in _screen(view, 101.0)
    view.apply(_new_beat("h1", 110.0, "sha256:b", 2))  # its inventory never reached us
    assert host.stale and host.domains == 2
    [line] = [ln for ln in _screen(view, 111.0).splitlines() if "2.0.0" in ln]
    assert "inventory stale" in line
    view.apply(_inventory("h1", 120.0, "sha256:b", []))
    assert not host.stale and view.vms[VM].state == "undefined"


def test_failures_come_first_then_hosts_and_vms_by_what_needs_attention():
    view = FleetView()
    for host in ("aa", "mm", "zz"):
        view.apply(_beat(host, 1000.0 if host != "mm" else 900.0))
    # 250 quiet VMs on host aa, sorted first by name; one failed VM on zz
    view.apply(_inventory("aa", 1000.0, "sha256:a", [
        {"uuid": _vm_uuid(i), "name": f"a-{i:03d}", "state": "shutoff"} for i in range(250)
    ]))  # fmt: skip
    err = {"code": "hook_failed", "message": "m", "source": "hook"}
    _, fail = events.op_event("zz", "start_vm", "fail", request_id="r9", correlation_id=None,
                              vm_uuid=VM, vm_name="zz-web", state="shutoff", error=err)  # fmt: skip
    view.apply(_at(fail, 1001.0))
    text = _screen(view, 1002.0, max_vms=10)
    assert text.index("Recent failures") < text.index("Hosts") < text.index("VMs")
    rows = text[text.index("VMs") :].splitlines()
    assert "zz-web" in next(ln for ln in rows if "│" in ln and ("zz-web" in ln or "a-" in ln))
    assert "and 241 more" in text
    hosts = text[text.index("Hosts") : text.index("VMs")]
    assert hosts.index("mm") < hosts.index("aa")  # DOWN first (missed its beats)
    assert "DOWN" in hosts.splitlines()[next(i for i, ln in enumerate(hosts.splitlines())
                                            if "mm" in ln)]  # fmt: skip


def test_host_filter_shows_only_those_hosts_their_vms_and_failures():
    view = FleetView()
    view.apply(_beat("h1", 100.0, domains=[{"uuid": VM, "name": "web-1", "state": "running"}]))
    view.apply(_beat("h2", 100.0, domains=[{"uuid": _vm_uuid(2), "name": "db-2",
                                            "state": "running"}]))  # fmt: skip
    view.apply(_op("fail", 101.0, error={"code": "x", "message": "on-h1", "source": "libvirt"}))
    text = _screen(view, 102.0, hosts=["h2"])
    assert "db-2" in text and "web-1" not in text and "on-h1" not in text
    assert "1 host(s), 1 VM(s)" in text
    assert "on-h1" in _screen(view, 102.0, hosts=["h1"])


def test_a_host_offline_longer_than_the_setting_is_hidden():
    view = FleetView()
    view.apply(_beat("h1", 1000.0, domains=[{"uuid": VM, "name": "web-1", "state": "running"}]))
    view.apply(_host_ev("h1", "offline", 1001.0))
    view.apply(_beat("h2", 5000.0))
    assert "web-1" in _screen(view, 5000.0, offline_after=7200)
    text = _screen(view, 5000.0, offline_after=3600)
    assert "web-1" not in text and "1 offline host(s) hidden" in text
    assert "h2" in text
    assert view.shown_hosts(5000.0, (), 3600) == {"h2"}


def test_a_refused_message_or_one_for_no_such_vm_is_a_failure_not_a_vm():
    view = FleetView()
    ghost = "99999999-2222-3333-4444-555555555555"
    _, bad = events.op_event("h1", "start_vm", "fail", request_id="r1", correlation_id=None,
                             vm_uuid=ghost, vm_name=None, state="unknown",
                             error={"code": "bad_field", "message": "m",
                                    "source": "validation"})  # fmt: skip
    view.apply(_at(bad, 10.0))
    _, before = events.op_event("h1", "start_vm", "before", request_id="r2", correlation_id=None,
                                vm_uuid=VM, vm_name=None)  # fmt: skip
    view.apply(_at(before, 11.0))
    _, gone = events.op_event("h1", "start_vm", "fail", request_id="r2", correlation_id=None,
                              vm_uuid=VM, vm_name=None, state="unknown",
                              error={"code": "no_domain", "message": "m",
                                     "source": "libvirt"})  # fmt: skip
    view.apply(_at(gone, 12.0))
    assert view.vms == {} and len(view.failures) == 2
    # a VM the events know keeps its row when an operation on it fails
    view.apply(_state("started", "booted", "running", 20.0))
    _, fail = events.op_event("h1", "stop_vm", "fail", request_id="r3", correlation_id=None,
                              vm_uuid=VM, vm_name="web-1", state="running",
                              error={"code": "no_domain", "message": "m",
                                     "source": "libvirt"})  # fmt: skip
    view.apply(_at(fail, 21.0))
    assert view.vms[VM].result == "failed"


def test_the_progress_line_says_how_far_the_log_replay_got():
    view = FleetView()
    view.apply(_beat("h1", 100.0, domains=[{"uuid": VM, "name": "web-1", "state": "running"}]))
    line = progress_line(view, 100.0, now=3700.0)
    assert line == (
        "reading the events log: 1 event(s), 1 host(s), 1 VM(s), now at events of 60m ago"
    )
