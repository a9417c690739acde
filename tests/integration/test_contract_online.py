"""`host.online` is the first event of a worker's run, before any operation's, with the depth
of the host queue it found before consuming (docs/protocol.md, host events)."""

from __future__ import annotations

import uuid

from tests.support import broker_conn


def test_host_online_comes_first_with_the_messages_that_were_waiting(env, tap, start_worker):
    with broker_conn() as conn:
        env.topology.declare(conn)
    waiting = [env.publish("pause_vm", {"uuid": str(uuid.uuid4())}) for _ in range(5)]
    start_worker()
    for rid in waiting:
        assert tap.wait_terminal(rid)["data"]["error"]["code"] == "no_domain"
    ours = [e for e in tap.events if e["source"] == f"vmworker://{env.host}"]
    first = ours[0]
    assert first["_routing_key"] == f"{env.host}.host.online", [e["type"] for e in ours[:3]]
    assert first["data"]["queue_depth"] == len(waiting)
    assert sum(e["type"] == "vmworker.host.online" for e in ours) == 1
    # then the whole inventory, still before any operation's events: a reader needs no more
    second = ours[1]
    assert second["type"] == "vmworker.host.inventory" and second["data"]["reason"] == "online"
    assert second["data"]["inventory_digest"] == first["data"]["inventory_digest"]
