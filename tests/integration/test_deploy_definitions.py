"""`vmworker broker definitions` (what the compose stack's RabbitMQ loads at boot) imported into
the real broker, under a prefix and user names of this test's own: the topology is there, and
each user can do its job and nothing more."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner
from kombu import Connection, Consumer, Producer, Queue

from tests.identities import refused
from tests.support import BROKER, broker_conn, delete_topology, unique, wait_depth
from worker.brokeradmin import Rabbitmqctl
from worker.cli import main
from worker.publish import build_body, publish_op
from worker.topology import Topology

pytestmark = pytest.mark.timeout(120)


def _url(user: str, password: str) -> str:
    return BROKER.replace("guest:guest@", f"{user}:{password}@")


def test_definitions_load_into_rabbitmq_and_confine_each_user():
    prefix, ha, hb, cp, mon = unique("t"), unique("ha"), unique("hb"), unique("cp"), unique("mo")
    pw = {u: uuid.uuid4().hex for u in (ha, hb, cp, mon)}
    args = [
        "broker",
        "definitions",
        "--prefix",
        prefix,
        "--host",
        ha,
        "--host",
        hb,
        "--control-plane",
        cp,
        "--monitor",
        mon,
    ]
    for u, p in pw.items():
        args += ["--password", f"{u}={p}"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    del doc["vhosts"]  # the shared broker's "/" exists; it is not ours to redefine
    ctl = Rabbitmqctl()
    try:
        ctl("import_definitions", "--format", "json", stdin=json.dumps(doc))
        ta, tb = Topology(prefix, ha, passive=True), Topology(prefix, hb, passive=True)
        # the control plane publishes to host a before any worker ever ran: it is kept
        with Connection(_url(cp, pw[cp]), transport_options={"confirm_publish": True}) as conn:
            vm = {"uuid": str(uuid.uuid4()), "name": "x", "vcpus": 1, "memory_mib": 64}
            publish_op(conn, ta, build_body("define_vm", vm), user_id=cp)
        with broker_conn() as admin:
            wait_depth(admin, ta.host_queue.name, 1)
            wait_depth(admin, tb.host_queue.name, 0)
        # host a reads its own queue, and is refused host b's
        got = []
        with Connection(_url(ha, pw[ha])) as conn, conn.channel() as ch:
            ta.declare(conn)  # what its worker does at start: check + its own queues
            c = Consumer(
                ch,
                queues=[Queue(ta.host_queue.name, no_declare=True)],
                on_message=got.append,
                no_ack=True,
            )
            c.consume()
            conn.drain_events(timeout=5)
        assert len(got) == 1 and got[0].properties["user_id"] == cp
        with (
            Connection(_url(ha, pw[ha])) as conn,
            pytest.raises(Exception) as exc,
            conn.channel() as ch,
        ):
            Consumer(ch, queues=[Queue(tb.host_queue.name, no_declare=True)]).consume()
        assert refused(exc.value)
        # the monitor reads the events log, and may not publish operations
        res = CliRunner().invoke(
            main,
            ["events", "--from-start", "--idle", "0.3"],
            env={
                "VMWORKER_BROKER": _url(mon, pw[mon]),
                "VMWORKER_PREFIX": prefix,
                "VMWORKER_DECLARE_SHARED": "false",
            },
        )
        assert res.exit_code == 0, res.output
        confirmed = {"confirm_publish": True}
        with (
            Connection(_url(mon, pw[mon]), transport_options=confirmed) as conn,
            pytest.raises(Exception) as exc,
            conn.channel() as ch,
        ):
            Producer(ch).publish(b"{}", exchange=ta.ops.name, routing_key=ha, retry=False)
        assert refused(exc.value)
    finally:
        for u in pw:
            ctl.revoke(u)
        delete_topology(prefix, [ha, hb])
