"""The heartbeat says liveness and counters; the inventory goes in `host.inventory`, when it
changed, right after `host.online`, and as a snapshot every `inventory_interval`
(worker/heartbeat.py, docs/protocol.md)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from handlers.connection import LibvirtConnection
from tests.schemagen import validator
from worker import events
from worker.eventschema import event_schema
from worker.heartbeat import Heartbeat, inventory_digest
from worker.hooks import HookEngine

CHECK = validator(event_schema())
# bytes: a heartbeat, encoded, whatever the number of VMs (611 with this test's host id "h1"
# and two states; the envelope alone is 215, the digest 87; docs/performance.md)
BEAT_MAX = 640


class Sink(list[tuple[str, dict[str, Any]]]):
    def __call__(self, rk: str, ev: dict[str, Any]) -> None:
        assert not list(CHECK.iter_errors(ev)), ev["type"]
        self.append((rk, ev))

    def kinds(self) -> list[str]:
        return [rk.split(".", 1)[1] for rk, _ in self]


def _beat(tmp_path: Path, sink: Sink, lv: LibvirtConnection) -> Heartbeat:
    hooks = tmp_path / "hooks"
    (hooks / "before_vm_start").mkdir(parents=True, exist_ok=True)
    for i in range(5):
        script = hooks / "before_vm_start" / f"{i}0_hook"
        script.write_text(f"#!/bin/sh\n# {i}\nexit 0\n")
        script.chmod(0o755)
    return Heartbeat(
        host="h1",
        interval=30.0,
        inventory_interval=3600.0,
        sink=sink,
        libvirt_conn=lv,
        hooks=HookEngine(hooks),
        queue_depth=lambda: 0,
        outbox_size=lambda: 0,
        in_flight=lambda: 0,
        online_by_caller=True,
    )


def _define(lv: LibvirtConnection, n: int) -> None:
    conn = lv.get()
    for i in range(n):
        conn.defineXML(
            f"<domain type='test'><name>hb-{i}-{uuid.uuid4().hex[:6]}</name>"
            f"<uuid>{uuid.uuid4()}</uuid><memory unit='MiB'>512</memory>"
            "<os><type>hvm</type></os></domain>"
        )


@pytest.fixture
def lv() -> LibvirtConnection:
    conn = LibvirtConnection("test:///default")  # a private copy of the test driver per process
    yield conn
    for dom in conn.get().listAllDomains(0):
        if dom.name().startswith("hb-"):
            dom.undefine()


def test_online_then_the_whole_inventory_then_small_heartbeats_until_it_changes(
    tmp_path: Path, lv: LibvirtConnection
) -> None:
    _define(lv, 100)
    sink = Sink()
    beat = _beat(tmp_path, sink, lv)
    beat.online(0)
    assert sink.kinds() == ["host.online", "host.inventory"]
    online, inv = sink[0][1]["data"], sink[1][1]["data"]
    assert "domains" not in online and "hooks" not in online
    assert inv["reason"] == "online" and len(inv["domains"]) == 101  # the driver's own "test"
    assert len(inv["hooks"]["before_vm_start"]) == 5
    assert inv["inventory_digest"] == online["inventory_digest"] == inventory_digest(inv)
    assert online["vms"] == {"total": 101, "by_state": {"running": 1, "shutoff": 100}}

    beat.tick()  # nothing changed: a heartbeat only, with the same digest
    beat.tick()
    assert sink.kinds()[2:] == ["host.heartbeat", "host.heartbeat"]
    hb = sink[-1][1]
    assert hb["data"]["inventory_digest"] == inv["inventory_digest"]
    assert set(hb["data"]) == {
        "host", "worker", "interval_s", "inventory_digest", "vms", "libvirt", "memory",
        "queue_depth", "outbox", "operations_in_flight",
    }  # fmt: skip
    size = len(events.encode(hb))
    assert size <= BEAT_MAX, events.encode(hb).decode()
    assert len(events.encode(sink[1][1])) > 10 * size  # what every beat carried before

    _define(lv, 1)  # changed: the inventory first, then the heartbeat naming its digest
    beat.tick()
    assert sink.kinds()[4:] == ["host.inventory", "host.heartbeat"]
    changed, hb = sink[4][1]["data"], sink[5][1]["data"]
    assert changed["reason"] == "changed" and len(changed["domains"]) == 102
    assert hb["inventory_digest"] == changed["inventory_digest"] != inv["inventory_digest"]
    assert hb["vms"]["total"] == 102


def test_a_snapshot_every_inventory_interval_even_when_nothing_changed(
    tmp_path: Path, lv: LibvirtConnection
) -> None:
    sink = Sink()
    beat = _beat(tmp_path, sink, lv)
    beat.online(0)
    beat.tick()
    assert sink.kinds()[2:] == ["host.heartbeat"]
    beat._sent_at -= beat.inventory_interval  # an hour later
    beat.tick()
    assert sink.kinds()[3:] == ["host.inventory", "host.heartbeat"]
    assert sink[3][1]["data"]["reason"] == "snapshot"
    beat.tick()
    assert sink.kinds()[5:] == ["host.heartbeat"]


def test_free_memory_moving_does_not_change_the_digest(tmp_path: Path, lv: LibvirtConnection):
    beat = _beat(tmp_path, Sink(), lv)
    inv = beat.inventory()
    moved = {**inv, "memory": {"total_mib": 1, "free_mib": 0}, "worker": {"uptime_s": 9}}
    assert inventory_digest(moved) == inventory_digest(inv)
    assert inventory_digest({**inv, "domains": []}) != inventory_digest(inv)


def test_a_libvirt_that_does_not_answer_leaves_vms_null(tmp_path: Path) -> None:
    sink = Sink()
    beat = _beat(tmp_path, sink, LibvirtConnection("test:///nonexistent/path.xml"))
    beat.online(0)
    online, inv = sink[0][1]["data"], sink[1][1]["data"]
    assert online["vms"] is None and online["libvirt"]["error"]
    assert inv["domains"] is None and inv["libvirt"]["error"]
