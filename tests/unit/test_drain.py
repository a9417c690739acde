"""Draining a host without a broker: the inventory learnt from events, the plan, and the
migrations' state machine fed with recorded `migrate_vm` events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from worker import events
from worker.drainplan import DrainRun, Inventory, Vm, plan_by_memory, plan_round_robin

T0 = 1_800_000_000.0


def _at(ev: dict[str, Any], t: float) -> dict[str, Any]:
    ev["time"] = datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
    return ev


def _dom(n: int, state: str = "running", mib: int = 512) -> dict[str, Any]:
    return {"uuid": f"00000000-0000-0000-0000-{n:012d}", "name": f"vm-{n}", "state": state,
            "persistent": True, "memory_mib": mib}  # fmt: skip


def _beat(host: str, t: float, domains: list[dict[str, Any]], free: int | None = 4096) -> dict:
    lv: dict[str, Any] = {"uri": "qemu:///system", "version": "9.0.0"}
    if free is not None:
        lv["memory"] = {"total_mib": 8192, "free_mib": free}
    data = {"host": host, "interval_s": 10.0, "libvirt": lv, "domains": domains}
    ev = events.cloud_event(host, ("host", "heartbeat"), subject=None, request_id=None, data=data)
    return _at(ev, t)


def _state(host: str, n: int, word: str, dom_state: str, t: float) -> dict[str, Any]:
    uuid = _dom(n)["uuid"]
    data = {"host": host, "vm": {"uuid": uuid, "name": f"vm-{n}"}, "state": word,
            "reason": "booted", "domain_state": dom_state}  # fmt: skip
    return _at(
        events.cloud_event(host, ("state", word), subject=uuid, request_id=None, data=data), t
    )


def _mig(rid: str, phase: str, **data: Any) -> dict[str, Any]:
    """A `host-a.migrate_vm.<phase>` event as the source worker publishes it."""
    body = {"op": "migrate_vm", "phase": phase, "host": "host-a", "request_id": rid,
            "vm": {"uuid": "u", "name": "n"}, "destination": "host-b", **data}  # fmt: skip
    return events.cloud_event(
        "host-a", ("migrate_vm", phase), subject="u", request_id=rid, data=body
    )


# -- the inventory ------------------------------------------------------------------------------
def test_the_vms_of_a_host_are_its_newest_heartbeats_running_ones_and_later_starts():
    inv = Inventory()
    inv.apply(_beat("host-a", T0, [_dom(1), _dom(2, "shutoff"), _dom(3, "paused")]))
    inv.apply(_beat("host-b", T0, [_dom(9)]))
    inv.apply(_state("host-a", 4, "started", "running", T0 + 2))  # after the beat
    assert [v.name for v in inv.vms_on("host-a")] == ["vm-1", "vm-3", "vm-4"]
    assert inv.vms_on("host-a")[0].memory_mib == 512
    assert inv.vms_on("host-a")[2].memory_mib is None  # no inventory has listed it yet
    # a newer beat without vm-1: it left the host
    inv.apply(_beat("host-a", T0 + 10, [_dom(3, "paused"), _dom(4)]))
    assert [v.name for v in inv.vms_on("host-a")] == ["vm-3", "vm-4"]
    assert inv.free_mib("host-b") == 4096 and inv.free_mib("host-z") is None


def _host(host: str, kind: str, t: float, **data: Any) -> dict[str, Any]:
    ev = events.cloud_event(host, ("host", kind), subject=None, request_id=None,
                            data={"host": host, **data})  # fmt: skip
    return _at(ev, t)


def test_the_vms_come_from_host_inventory_and_free_memory_from_the_heartbeat():
    inv = Inventory()
    mem = {"total_mib": 8192, "free_mib": 2048}
    inv.apply(_host("host-a", "online", T0, interval_s=10.0, inventory_digest="sha256:a",
                    vms={"total": 2, "by_state": {"running": 2}}, memory=mem))  # fmt: skip
    assert not inv.known("host-a", source=True)  # no VM list yet
    assert inv.known("host-a", source=False) and inv.free_mib("host-a") == 2048
    inv.apply(_host("host-a", "inventory", T0 + 0.1, reason="online",
                    inventory_digest="sha256:a", domains=[_dom(1, mib=1024), _dom(2)]))  # fmt: skip
    assert inv.known("host-a", source=True)
    assert [(v.name, v.memory_mib) for v in inv.vms_on("host-a")] == [("vm-1", 1024), ("vm-2", 512)]
    inv.apply(_host("host-a", "heartbeat", T0 + 10, interval_s=10.0, inventory_digest="sha256:a",
                    vms={"total": 2, "by_state": {"running": 2}},
                    memory={**mem, "free_mib": 1024}))  # fmt: skip
    assert inv.free_mib("host-a") == 1024 and len(inv.vms_on("host-a")) == 2


def test_a_host_is_down_after_three_missed_beats_and_unknown_if_never_heard():
    inv = Inventory()
    inv.apply(_beat("host-a", T0, []))
    assert inv.status("host-a", T0 + 5) == "online"
    assert inv.status("host-a", T0 + 40) == "down"
    assert inv.status("host-x", T0) == "unknown"


def test_an_older_heartbeat_seen_late_changes_nothing():
    inv = Inventory()
    inv.apply(_beat("host-b", T0 + 10, [], free=1000))
    inv.apply(_beat("host-b", T0, [], free=9000))
    assert inv.free_mib("host-b") == 1000


# -- the plan -----------------------------------------------------------------------------------
def _vms(*mib: int | None) -> list[Vm]:
    return [Vm(f"u{i}", f"vm-{i}", "running", m) for i, m in enumerate(mib)]


def test_round_robin_takes_the_destinations_in_turn():
    moves = plan_round_robin(_vms(1, 1, 1, 1, 1), ["b", "c"])
    assert [m.destination for m in moves] == ["b", "c", "b", "c", "b"]
    with pytest.raises(ValueError):
        plan_round_robin(_vms(1), [])


def test_by_memory_puts_the_largest_first_where_most_is_free_and_never_overfills():
    moves = plan_by_memory(_vms(1024, 4096, 2048, 512), {"b": 5000, "c": 3000})
    got = {m.vm.name: m.destination for m in moves}
    # 4096 -> b (904 left), 2048 -> c (952 left), 1024 -> none fits, 512 -> c
    assert got == {"vm-1": "b", "vm-2": "c", "vm-0": None, "vm-3": "c"}
    unplaced = [m for m in moves if m.destination is None]
    assert [(m.status, m.error_code) for m in unplaced] == [("unplaced", "no_room")]


def test_by_memory_skips_a_destination_that_does_not_say_and_needs_one_that_does():
    moves = plan_by_memory(_vms(100, 100), {"b": None, "c": 1000})
    assert {m.destination for m in moves} == {"c"}
    with pytest.raises(ValueError, match="free"):
        plan_by_memory(_vms(100), {"b": None})


# -- the state machine, fed with recorded events ------------------------------------------------
def test_at_most_parallel_under_way_and_the_next_starts_when_one_ends():
    run = DrainRun(plan_round_robin(_vms(1, 1, 1), ["host-b"]), parallel=2)
    first = run.to_send()
    assert [m.vm.name for m in first] == ["vm-0", "vm-1"]
    for i, m in enumerate(first):
        run.sent(m, f"r{i}", T0)
    assert run.to_send() == []
    assert run.apply(_mig("r0", "before"), T0 + 0.1) is first[0]
    prog = {"data_processed_bytes": 50, "data_remaining_bytes": 50, "data_total_bytes": 100,
            "bandwidth_mib_s": 100.0, "dirty_rate_pages_s": 0, "iteration": 1,
            "expected_downtime_ms": 30, "percent": 50.0}  # fmt: skip
    run.apply(_mig("r0", "progress", progress=prog), T0 + 1)
    assert first[0].status == "running" and first[0].percent == 50.0
    assert run.to_send() == []
    run.apply(_mig("r0", "after", state="running"), T0 + 2.5)
    assert first[0].status == "ok" and first[0].duration == 2.5
    nxt = run.to_send()
    assert [m.vm.name for m in nxt] == ["vm-2"]
    run.sent(nxt[0], "r2", T0 + 2.5)
    err = {"source": "libvirt", "code": "destination_unreachable", "message": "no route"}
    run.apply(_mig("r1", "fail", error=err), T0 + 3)
    run.apply(_mig("r2", "after"), T0 + 4)
    assert run.done
    assert [(m.vm.name, m.status, m.error_code) for m in run.failed] == [
        ("vm-1", "failed", "destination_unreachable")
    ]
    row = run.moves[1].row()
    assert row["outcome"] == "failed" and row["error"] == "no route" and row["duration_s"] == 3.0


def test_events_of_other_requests_and_after_the_end_are_ignored():
    run = DrainRun(plan_round_robin(_vms(1), ["host-b"]), parallel=1)
    m = run.to_send()[0]
    run.sent(m, "r0", T0)
    assert run.apply(_mig("someone-else", "after"), T0 + 1) is None
    run.apply(_mig("r0", "after"), T0 + 1)
    assert run.apply(_mig("r0", "fail", error={"code": "x"}), T0 + 2) is None  # a late copy
    assert m.status == "ok"


def test_a_migration_with_no_outcome_by_its_deadline_counts_as_failed():
    run = DrainRun(plan_round_robin(_vms(1, 1), ["host-b"]), parallel=1)
    m = run.to_send()[0]
    run.sent(m, "r0", T0)
    assert run.expire(T0 + 5, timeout=10) == []
    assert run.expire(T0 + 11, timeout=10) == [m]
    assert m.status == "no_outcome" and run.failed == [m]
    assert [x.vm.name for x in run.to_send()] == ["vm-1"]  # the drain goes on


def test_an_unplaced_vm_is_never_sent_and_fails_the_drain():
    moves = plan_by_memory(_vms(9000, 10), {"b": 100})
    run = DrainRun(moves, parallel=4)
    assert [m.vm.name for m in run.to_send()] == ["vm-1"]
    run.sent(run.to_send()[0], "r", T0)
    run.apply(_mig("r", "after"), T0 + 1)
    assert run.done and [m.vm.name for m in run.failed] == ["vm-0"]


def test_a_vm_gone_from_the_source_since_the_inventory_does_not_fail_the_drain():
    run = DrainRun(plan_round_robin(_vms(1), ["host-b"]), parallel=1)
    m = run.to_send()[0]
    run.sent(m, "r0", T0)
    run.apply(_mig("r0", "fail", error={"code": "no_domain", "message": "no domain"}), T0 + 1)
    assert m.status == "gone" and run.done and run.failed == []


def test_a_refusing_hooks_stderr_is_part_of_the_error():
    run = DrainRun(plan_round_robin(_vms(1), ["host-b"]), parallel=1)
    m = run.to_send()[0]
    run.sent(m, "r0", T0)
    err = {"code": "hook_failed", "message": "10_policy failed (rc=2)",
           "stderr": "[10_policy: rc=2] policy: not here"}  # fmt: skip
    run.apply(_mig("r0", "fail", error=err), T0 + 1)
    assert m.error == "10_policy failed (rc=2) | [10_policy: rc=2] policy: not here"


def test_when_the_source_goes_down_the_drain_gives_up_on_what_is_left():
    run = DrainRun(plan_round_robin(_vms(1, 1, 1), ["host-b"]), parallel=1)
    first, second = run.to_send()[0], run.moves[1]
    run.sent(first, "r0", T0)
    run.apply(_mig("r0", "after"), T0 + 1)
    run.sent(run.to_send()[0], "r1", T0 + 1)
    run.abort(T0 + 50, "source_down", "host host-a is down")
    assert [m.status for m in run.moves] == ["ok", "no_outcome", "not_sent"]
    assert run.done and run.failed == run.moves[1:] and second.error_code == "source_down"
