"""Per-host broker identities (`vmworker broker grant`), checked by the real RabbitMQ: a host's
user reaches only its own queues and routing keys; its worker still does all of its own work."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from kombu import Connection, Consumer, Producer, Queue

from tests.identities import refused
from tests.support import BROKER, ThreadWorker, broker_conn, unique, wait_depth
from worker.cli import main
from worker.topology import Topology

pytestmark = pytest.mark.timeout(120)


def _setup(prefix: str, *hosts: str) -> None:
    """`vmworker broker setup` as the administrator (guest): shared topology + hosts' queues."""
    args = ["broker", "setup", "--broker", BROKER, "--prefix", prefix]
    for h in hosts:
        args += ["--host", h]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output


def _attempt(url: str, action: Any) -> Exception | None:
    """Run action(channel) on a fresh connection as that user: None, or the broker's error."""
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        try:
            with conn.channel() as ch:
                action(ch)
            return None
        except Exception as exc:
            return exc


def _publish(exchange: str, key: str, **props: Any) -> Any:
    def act(ch: Any) -> None:
        Producer(ch).publish(b"{}", exchange=exchange, routing_key=key, retry=False, **props)

    return act


def _consume(queue: str) -> Any:
    def act(ch: Any) -> None:
        Consumer(ch, queues=[Queue(queue, no_declare=True)], no_ack=False).consume()

    return act


def test_host_identity_reaches_only_its_own_queues_and_routing_keys(env, identities):
    a, b = env.host, unique("hb")
    env.other_hosts.append(b)
    _setup(env.prefix, a, b)
    url_a = identities.grant("--host", a, "--prefix", env.prefix)
    ta, tb = Topology(env.prefix, a), Topology(env.prefix, b)

    # refused by the broker
    denied = {
        "consume another host's queue": _consume(tb.host_queue.name),
        "consume another host's dead letters": _consume(tb.dead_queue.name),
        "bind its queue to another host's key": lambda ch: ch.queue_bind(
            ta.host_queue.name, ta.ops.name, b
        ),
        "publish an event as another host": _publish(ta.events.name, f"{b}.start_vm.after"),
        "publish a heartbeat as another host": _publish(ta.events.name, f"{b}.host.heartbeat"),
        "publish an operation": _publish(ta.ops.name, a),
        "dead-letter as another host": _publish(ta.dlx.name, b),
        "declare a shared exchange": lambda ch: ch.exchange_declare(
            ta.ops.name, "topic", durable=True
        ),
        "delete another host's queue": lambda ch: ch.queue_delete(tb.host_queue.name),
        "read the events stream": _consume(ta.events_log.name),
        "forge user_id": _publish(ta.events.name, f"{a}.x.after", user_id="guest"),
    }
    outcomes = {what: _attempt(url_a, act) for what, act in denied.items()}
    for what, exc in outcomes.items():
        if what == "forge user_id":
            assert exc is not None and getattr(exc, "reply_code", None) == 406, (what, exc)
        else:
            assert exc is not None and refused(exc), (what, exc)

    # allowed: its own work
    allowed = {
        "declare its own queues": lambda ch: None,
        "consume its own queue": _consume(ta.host_queue.name),
        "publish its own events": _publish(ta.events.name, f"{a}.start_vm.after"),
        "dead-letter its own messages": _publish(ta.dlx.name, a),
    }
    with Connection(url_a) as conn:
        ta_passive = Topology(env.prefix, a, passive=True)
        ta_passive.declare(conn)  # check_shared + declare_host
    for what, act in allowed.items():
        assert _attempt(url_a, act) is None, what
    with broker_conn() as admin:
        wait_depth(admin, ta.dead_queue.name, 1)  # the one it dead-lettered

    # a body naming another host, under its own routing key: readers drop it as forged
    def event(rid: str, host: str) -> bytes:
        return json.dumps(
            {
                "specversion": "1.0",
                "id": rid,
                "source": f"vmworker://{host}",
                "type": "vmworker.start_vm.after",
                "requestid": rid,
                "data": {"host": host, "phase": "after"},
            }
        ).encode()

    forged, honest = str(uuid.uuid4()), str(uuid.uuid4())
    for rid, claimed in ((forged, b), (honest, a)):
        assert (
            _attempt(
                url_a,
                lambda ch, rid=rid, claimed=claimed: Producer(ch).publish(
                    event(rid, claimed),
                    exchange=ta.events.name,
                    routing_key=f"{a}.start_vm.after",
                    retry=False,
                ),
            )
            is None
        )
    res = CliRunner().invoke(
        main,
        ["events", "--from-start", "--idle", "0.5"],
        env={"VMWORKER_BROKER": BROKER, "VMWORKER_PREFIX": env.prefix},
    )
    seen = [
        json.loads(line).get("requestid")
        for line in res.stdout.splitlines()
        if line.startswith("{")
    ]
    assert honest in seen and forged not in seen, seen

    # revoked: an open connection is closed, a new one refused
    conn = Connection(url_a)
    conn.connect()
    identities.revoke_all()
    lost: Exception | None = None
    for _ in range(50):
        try:
            conn.drain_events(timeout=0.1)
        except TimeoutError:
            continue
        except Exception as exc:
            lost = exc
            break
    assert lost is not None and "CONNECTION_FORCED" in str(lost), lost
    with pytest.raises(Exception, match=r"ACCESS_REFUSED|403"):
        Connection(url_a).connect()


def test_worker_with_host_identity_runs_an_operation_from_the_control_plane(
    env, identities, tap, test_domains
):
    _setup(env.prefix, env.host)
    plane = unique("cp")
    url_host = identities.grant("--host", env.host, "--prefix", env.prefix)
    url_plane = identities.grant("--control-plane", plane, "--prefix", env.prefix)
    worker = ThreadWorker(
        env.settings(broker=url_host, declare_shared=False, allowed_publishers=[plane])
    ).start()
    try:
        vm = {"uuid": str(uuid.uuid4()), "name": unique("vmw-sec-"), "vcpus": 1, "memory_mib": 64}
        test_domains.append(vm["uuid"])
        spec = json.dumps(vm)
        res = CliRunner().invoke(
            main,
            ["publish", "--host", env.host, "define_vm", "--vm-uuid", vm["uuid"], "--spec", "-"],
            input=spec,
            env={
                "VMWORKER_BROKER": url_plane,
                "VMWORKER_PREFIX": env.prefix,
                "VMWORKER_DECLARE_SHARED": "false",
            },
            catch_exceptions=False,
        )
        assert res.exit_code == 0, res.output
        rid = res.stdout.split()[-1]  # the last line; the worker in this process logs too
        term = tap.wait_terminal(rid)
        assert term["data"]["phase"] == "after", term["data"].get("error")
        assert term["data"]["state"] == "shutoff"
        assert [e["data"]["phase"] for e in tap.of(rid)] == ["before", "after"]
        assert term["_routing_key"] == f"{env.host}.define_vm.after"
    finally:
        worker.stop()

    # the control plane may publish operations, but not read a host's queue nor speak for it
    t = env.topology
    assert refused(_attempt(url_plane, _consume(t.host_queue.name)))
    assert refused(_attempt(url_plane, _publish(t.events.name, f"{env.host}.define_vm.after")))
    assert refused(_attempt(url_plane, _publish(t.dlx.name, env.host)))
