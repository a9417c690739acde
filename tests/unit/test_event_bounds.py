"""Every event and every string in it is bounded (docs/protocol.md, Limits); a rejected message's
event carries only what was checked; the CLI views cut what they show."""

from __future__ import annotations

import json

from rich.console import Console

from worker import events
from worker.bounds import EVENT_MAX, FIELD_MAX, TEXT_MAX, bound, cut
from worker.history import format_entry
from worker.messages import peek
from worker.monitor import FleetView, render

VM = "6695eb01-f6a4-8304-79aa-97f2502e193f"


def _fail(**kw: object) -> dict:
    fields = dict(
        request_id="r1",
        correlation_id=None,
        vm_uuid=VM,
        vm_name="web-1",
        state="unknown",
        hooks=[],
        error={"code": "x", "message": "m", "source": "libvirt"},
    )
    fields.update(kw)
    return events.op_event("h1", "start_vm", "fail", **fields)[1]  # type: ignore[arg-type]


def test_peek_returns_only_a_known_op_and_a_valid_uuid_never_the_name():
    name = "n" * 1_200_000
    body = json.dumps({"op": "start_vm", "vm": {"uuid": VM.upper(), "name": name}}).encode()
    assert peek(body) == {"op": "start_vm", "vm_uuid": VM}
    bad = json.dumps({"op": "x" * 5000, "vm": {"uuid": "y" * 5000, "name": "z"}}).encode()
    assert peek(bad) == {}
    assert peek(b"[" * 100_000) == {} and peek(b"\xff") == {}


def test_a_huge_name_is_cut_with_a_marker_and_the_event_stays_small():
    ev = _fail(vm_name="x" * 1_200_717)
    name = ev["data"]["vm"]["name"]
    assert len(name) <= FIELD_MAX and name.endswith("…[cut: 1200717 chars]")
    assert ev["data"]["cut"] == ["data.vm.name"]
    assert len(events.encode(ev)) < 4 * FIELD_MAX


def test_an_event_within_its_limits_is_left_as_it_is():
    ev = _fail()
    assert "cut" not in ev["data"] and ev["data"]["vm"]["name"] == "web-1"


def test_hook_output_is_cut_first_keeping_its_end_and_the_whole_event_fits():
    hooks = [
        {
            "name": f"{i:02d}_h",
            "rc": 1,
            "sha256": "a" * 64,
            "stdout_tail": "o" * 20_000,
            "stderr_tail": "e" * 7000 + f"END{i}",
        }
        for i in range(30)
    ]
    ev = _fail(hooks=hooks, error={"code": "hook_failed", "message": "m" * 900, "source": "hook"})
    assert len(events.encode(ev)) <= EVENT_MAX
    data = ev["data"]
    assert data["error"]["message"] == "m" * 900  # hook output went first
    for i, h in enumerate(data["hooks"]):
        assert h["sha256"] == "a" * 64 and h["stderr_tail"].endswith(f"END{i}")
        assert h["stdout_tail"].startswith("[cut: ") and len(h["stdout_tail"]) <= TEXT_MAX
    assert "data.hooks.*.stdout_tail" in data["cut"]
    assert hooks[0]["stdout_tail"] == "o" * 20_000  # the caller's objects are not changed


def test_an_inventory_with_too_many_domains_is_cut_and_the_monitor_forgets_none():
    doms = [
        {"uuid": f"00000000-0000-0000-0000-{i:012d}", "name": f"vm-{i}", "state": "running"}
        for i in range(3000)
    ]
    ev = events.cloud_event(
        "h1", ("host", "inventory"), subject=None, request_id=None,
        data={"host": "h1", "reason": "changed", "domains": doms},
    )  # fmt: skip
    assert len(events.encode(ev)) <= EVENT_MAX
    assert 0 < len(ev["data"]["domains"]) < 3000 and "data.domains" in ev["data"]["cut"]
    view = FleetView()
    view.apply(events.cloud_event(
        "h1", ("host", "inventory"), subject=None, request_id=None,
        data={"host": "h1", "reason": "online", "domains": doms[-5:]},
    ))  # fmt: skip
    view.apply(ev)
    assert {view.vms[d["uuid"]].state for d in doms[-5:]} == {"running"}  # not `undefined`


def test_duplicates_and_events_made_by_hand_are_bounded_by_the_encoder():
    ev = _fail()
    ev["data"]["error"]["stderr"] = "s" * 2_000_000  # changed after it was built
    assert len(events.encode(ev)) <= EVENT_MAX
    dup = events.as_duplicate(ev, redelivered=True)
    assert len(dup["data"]["error"]["stderr"]) <= TEXT_MAX and dup["data"]["duplicate"] is True
    wide = {"id": "x", "data": {"items": [{"k": "v" * 60} for _ in range(100_000)]}}
    assert len(events.encode(wide)) <= EVENT_MAX


def test_cut_marks_what_it_cut_and_keeps_short_text():
    assert cut("abc", 10) == "abc"
    assert cut("a" * 300, 100) == "a" * 83 + "…[cut: 300 chars]"
    assert cut("a" * 299 + "Z", 100, tail=True).endswith("Z")
    assert len(cut("a" * 300, 8)) == 8


def test_the_monitor_and_history_cut_long_cells():
    huge = "w" * 500_000
    view = FleetView()
    ev = _fail(vm_name=huge, error={"code": "c", "message": huge, "source": "s", "stderr": huge})
    ev["data"]["vm"]["name"] = huge  # as an event published before events were bounded
    view.apply(ev)
    console = Console(record=True, width=120)
    console.print(render(view, 0.0))
    assert len(console.export_text().splitlines()) < 80
    entry = {"kind": "event", "time": "t", "what": "start_vm.fail", "request_id": huge, "event": ev}
    assert sum(len(line) for line in format_entry(entry)) < 2000


def test_a_small_event_is_returned_as_it_is() -> None:
    ev = {"specversion": "1.0", "id": "x", "data": {"name": "é" * 100, "n": 1, "l": [1, None]}}
    assert bound(ev) is ev
