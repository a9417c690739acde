"""The private-broker harness itself: a node of our own that can be restarted without touching the
shared broker, keeping durable messages across the restart."""

from __future__ import annotations

import pytest
from kombu import Connection, Exchange, Producer, Queue

from tests.brokers import port_open

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]


def test_private_node_restarts_and_keeps_durable_messages(rabbit_node):
    node = rabbit_node()
    assert node.nodename.startswith("vmwt-") and node.port != 5672
    q = Queue(
        "harness.q",
        Exchange("harness.x", "direct"),
        routing_key="k",
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )
    with Connection(node.url, transport_options={"confirm_publish": True}) as conn:
        q.bind(conn.default_channel).declare()
        Producer(conn.default_channel).publish(
            b"kept", exchange=q.exchange, routing_key="k", delivery_mode=2
        )
    node.stop_app()
    assert not port_open(node.port)
    node.start_app()
    with Connection(node.url) as conn:
        msg = q.bind(conn.default_channel).get(no_ack=True)
        assert msg is not None and msg.body == b"kept"
    assert "harness.q" in node.ctl("list_queues", "name")
    node.stop()
    assert not node.running
