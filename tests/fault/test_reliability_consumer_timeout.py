"""An operation that outlives the broker's consumer_timeout (RabbitMQ 3.10 has no per-queue or
per-consumer timeout): the broker closes the channel and requeues the message, the worker
reconnects, gets it back while the operation still runs, and acks it when it is done. It runs
once, with one `before` and one terminal event."""

from __future__ import annotations

import json
import uuid

import pytest
from kombu import Connection

from tests.reliability import SLEEP_HOOK, journal_rows, tally
from tests.support import queue_depth, read_stream, wait_for, write_hook
from worker.publish import build_body, publish_op

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]


def test_operation_longer_than_consumer_timeout_runs_once(
    env, hooks_root, rabbit_node, start_worker, test_domains
):
    # 2 s, checked every second (the channel tick is 60 s by default)
    node = rabbit_node(
        extra_conf="consumer_timeout = 2000",
        advanced="[{rabbit, [{channel_tick_interval, 1000}]}].",
    )
    write_hook(hooks_root, "before_vm_define", "50_sleep", SLEEP_HOOK)
    w = start_worker(broker=node.url, hook_timeout=60)
    spec = {
        "uuid": str(uuid.uuid4()),
        "name": f"vmw-ct-{uuid.uuid4().hex[:6]}",
        "vcpus": 1,
        "memory_mib": 64,
    }
    test_domains.append(spec["uuid"])
    with Connection(node.url, transport_options={"confirm_publish": True}) as c:
        rid = publish_op(c, env.topology, build_body("define_vm", spec, None, {"sleep_s": "6"}))
    wait_for(
        lambda: journal_rows(env.state_dir).get(rid, {}).get("state") == "finished",
        60,
        "the long operation",
    )
    with Connection(node.url) as c:
        wait_for(lambda: queue_depth(c, env.topology.host_queue.name) == 0, 30, "its ack")
        stream = [json.loads(m.body) for m in read_stream(c, env.topology.events_log.name, 10)]
    reconnects = w.service.stats.reconnects
    w.stop()
    t = tally(stream, [rid])
    row = journal_rows(env.state_dir)[rid]
    print(f"consumer timeout: reconnects={reconnects} deliveries={row['deliveries']} {t}")
    assert reconnects >= 1  # the broker did time the consumer out
    assert row["runs"] == 1 and row["deliveries"] >= 2
    assert t["lost"] == [] and t["twice"] == [] and t["no_before"] == []
