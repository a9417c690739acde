"""The broker restarted under the worker: a private RabbitMQ node (tests/brokers.py) is stopped
and started while 100 operations are in flight. Nothing is lost, nothing runs twice, and the
events that could not be confirmed while it was away are published, in order, once it is back."""

from __future__ import annotations

import json
import uuid

import pytest
from kombu import Connection

from tests.brokers import free_port
from tests.reliability import SLEEP_HOOK, journal_rows, outbox_ids, tally
from tests.support import queue_depth, read_stream, wait_depth, wait_for, write_hook
from worker.publish import build_body, publish_op

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]

N = 100


def test_broker_restart_with_100_operations_in_flight_loses_nothing_and_runs_nothing_twice(
    env, hooks_root, rabbit_node, start_worker, test_domains
):
    node = rabbit_node()
    write_hook(hooks_root, "before_vm_define", "50_sleep", SLEEP_HOOK)
    # a dead URL first: every (re)connection fails over to the live node
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    w = start_worker(broker=f"{dead};{node.url}", concurrency=8)
    specs = [
        {
            "uuid": str(uuid.uuid4()),
            "name": f"vmw-br-{i}-{uuid.uuid4().hex[:6]}",
            "vcpus": 1,
            "memory_mib": 64,
        }
        for i in range(N)
    ]
    test_domains.extend(s["uuid"] for s in specs)
    with Connection(node.url, transport_options={"confirm_publish": True}) as c:
        rids = [
            publish_op(c, env.topology, build_body("define_vm", s, None, {"sleep_s": "0.5"}))
            for s in specs
        ]

    def finished() -> int:
        return sum(1 for r in journal_rows(env.state_dir).values() if r["state"] == "finished")

    wait_for(lambda: finished() >= 1, 30, "the first operation to finish")
    issued_at = finished()
    node.stop_app()
    down_at = finished()
    # operations go on finishing; their events wait in the outbox
    held = wait_for(w.service.journal.outbox_size, 30, "events held in the outbox")
    node.start_app()
    wait_for(lambda: finished() == N, 90, "every operation to finish")
    with Connection(node.url) as c:
        wait_for(lambda: queue_depth(c, env.topology.host_queue.name) == 0, 60, "every ack")
        wait_depth(c, env.topology.dead_queue.name, 0)
    wait_for(lambda: w.service.journal.outbox_size() == 0, 30, "the outbox to drain")
    w.stop()
    assert w.service.stats.reconnects >= 1

    with Connection(node.url) as c:
        stream = [
            json.loads(m.body) for m in read_stream(c, env.topology.events_log.name, timeout=20)
        ]
    rows = journal_rows(env.state_dir)
    t = tally(stream, rids)
    print(
        f"broker restart: finished at stop_app={issued_at}, when down={down_at},"
        f" outbox held={held}"
        f" reconnects={w.service.stats.reconnects} {t}"
    )
    assert t["lost"] == [] and t["twice"] == [] and t["no_before"] == []
    assert all(rows[r]["runs"] == 1 for r in rids), [rows[r]["runs"] for r in rids]
    # the outbox was published in its own order, across the outage
    seen: list[str] = []
    for ev in stream:
        if ev["id"] not in seen:
            seen.append(ev["id"])
    assert seen == outbox_ids(env.state_dir)
