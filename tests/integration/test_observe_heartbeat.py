"""The host's heartbeat: its inventory on schedule, and `host.offline` when it stops."""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime
from typing import Any

from tests.support import small_vm


def _host_events(tap: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in tap.events if e["type"] == f"vmworker.host.{kind}"]


def _t(ev: dict[str, Any]) -> float:
    return datetime.fromisoformat(ev["time"].replace("Z", "+00:00")).timestamp()


def test_heartbeats_arrive_on_schedule_and_the_inventory_with_domains_and_hooks_when_it_changes(
    env, tap, start_worker, test_domains, hooks_root
):
    point = hooks_root / "before_vm_start"
    point.mkdir(mode=0o755)
    script = point / "50_tag"
    script.write_bytes(b"#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    sha = hashlib.sha256(script.read_bytes()).hexdigest()

    w = start_worker(heartbeat_interval=1.0)
    online = tap.wait(lambda: _host_events(tap, "online"))[0]
    assert online["_routing_key"] == f"{env.host}.host.online"
    assert "hooks" not in online["data"] and "domains" not in online["data"]
    first = tap.wait(lambda: _host_events(tap, "inventory"))[0]
    assert first["data"]["reason"] == "online"
    assert first["data"]["inventory_digest"] == online["data"]["inventory_digest"]
    assert first["data"]["hooks"]["before_vm_start"][0]["sha256"] == sha

    vm = small_vm("beat")
    test_domains.append(vm["uuid"])
    rid = env.publish("define_vm", vm)
    defined_at = _t(tap.wait_terminal(rid))

    def two_beats_since_define() -> list[dict[str, Any]] | None:
        later = [e for e in _host_events(tap, "heartbeat") if _t(e) > defined_at]
        return later if len(later) >= 2 else None

    beats = tap.wait(two_beats_since_define, timeout=5)
    all_beats = _host_events(tap, "heartbeat")
    gaps = [_t(b) - _t(a) for a, b in itertools.pairwise(all_beats)]
    assert gaps and all(0.8 <= g <= 1.3 for g in gaps), gaps

    hb = beats[-1]
    assert hb["_routing_key"] == f"{env.host}.host.heartbeat"
    assert hb["source"] == f"vmworker://{env.host}"
    d = hb["data"]
    assert d["host"] == env.host and d["interval_s"] == 1.0
    assert d["worker"]["version"] and d["worker"]["uptime_s"] > 0
    assert "domains" not in d and "hooks" not in d
    assert d["vms"]["total"] >= 2 and d["vms"]["by_state"]["shutoff"] >= 1
    mem = d["memory"]  # the test driver's node has 3 GiB
    assert mem["total_mib"] == 3072 and 0 <= mem["free_mib"] <= mem["total_mib"]
    assert d["queue_depth"] == 0
    assert isinstance(d["outbox"], int)

    # the definition changed the inventory: sent once, just before the heartbeat naming it
    [changed] = [e for e in _host_events(tap, "inventory") if _t(e) > defined_at]
    assert changed["data"]["reason"] == "changed"
    assert changed["data"]["inventory_digest"] == d["inventory_digest"]
    ours = [e["id"] for e in tap.events if e["source"] == f"vmworker://{env.host}"]
    assert ours.index(changed["id"]) < ours.index(beats[0]["id"])
    inv = changed["data"]
    assert inv["libvirt"]["hypervisor"] == "TEST" and inv["libvirt"]["version"].count(".") == 2
    mine = [x for x in inv["domains"] if x["uuid"] == vm["uuid"]]
    assert mine == [
        {
            "uuid": vm["uuid"],
            "name": vm["name"],
            "state": "shutoff",
            "persistent": True,
            "memory_mib": vm["memory_mib"],
        }
    ]
    hook = inv["hooks"]["before_vm_start"][0]
    assert hook["name"] == "50_tag" and hook["sha256"] == sha and not hook["refused"]

    w.stop()
    offline = tap.wait(lambda: _host_events(tap, "offline"))[0]
    assert offline["_routing_key"] == f"{env.host}.host.offline"
    assert offline["data"]["host"] == env.host
    # nothing from this host after it said goodbye
    last = [e for e in tap.events if e["source"] == f"vmworker://{env.host}"][-1]
    assert last["id"] == offline["id"]


def test_an_unchanged_inventory_is_sent_again_every_inventory_interval(env, tap, start_worker):
    start_worker(heartbeat_interval=0.5, inventory_interval=1.5)

    def snapshots() -> list[dict[str, Any]] | None:
        got = [e for e in _host_events(tap, "inventory") if e["data"]["reason"] == "snapshot"]
        return got if len(got) >= 2 else None

    first, second = tap.wait(snapshots, timeout=10)[:2]
    assert 1.3 <= _t(second) - _t(first) <= 2.2
    assert first["data"]["inventory_digest"] == second["data"]["inventory_digest"]
    assert isinstance(second["data"]["domains"], list)
    # between them only heartbeats: nothing changed
    between = [e for e in tap.events if _t(first) < _t(e) < _t(second)]
    assert between and {e["type"] for e in between} == {"vmworker.host.heartbeat"}
