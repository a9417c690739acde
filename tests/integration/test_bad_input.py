"""Bad input never crashes or stalls the worker: a clear fail event, the message dead-lettered
with the reason in its headers, and the next good message served."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.support import broker_conn, drain_queue, wait_depth

VM = str(uuid.uuid4())

CASES = [
    ("not_json", b"{not json", "not_json"),
    ("json_not_object", b'["start_vm"]', "not_object"),
    ("unknown_op", {"version": 1, "op": "fly_vm", "vm": {"uuid": VM}}, "unknown_op"),
    ("missing_uuid", {"version": 1, "op": "pause_vm", "vm": {"name": "x"}}, "invalid"),
    (
        "wrong_types",
        {
            "version": 1,
            "op": "shutdown_vm",
            "vm": {"uuid": VM},
            "params": {"timeout": "soon", "force": "maybe"},
        },
        "invalid",
    ),
    ("bad_uuid", {"version": 1, "op": "pause_vm", "vm": {"uuid": "not-a-uuid"}}, "invalid"),
    (
        "unknown_param",
        {"version": 1, "op": "pause_vm", "vm": {"uuid": VM}, "params": {"turbo": True}},
        "invalid",
    ),
    ("bad_version", {"version": 7, "op": "pause_vm", "vm": {"uuid": VM}}, "bad_version"),
    (
        "hostile_custom",
        {"version": 1, "op": "pause_vm", "vm": {"uuid": VM}, "custom": {"LD_PRELOAD": "/tmp/x.so"}},
        "bad_custom",
    ),
    (
        "too_large",
        {"version": 1, "op": "pause_vm", "vm": {"uuid": VM}, "custom": {"blob": "x" * 70_000}},
        "too_large",
    ),
]


@pytest.mark.parametrize(("name", "body", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_message_fails_clearly_and_is_dead_lettered(env, tap, start_worker, name, body, code):
    start_worker(max_body_bytes=64 * 1024)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    rid = env.publish("", body=raw)
    fail = tap.wait_terminal(rid)
    d = fail["data"]
    assert d["phase"] == "fail"
    assert d["error"]["source"] == "validation" and d["error"]["code"] == code
    assert d["error"]["message"]
    assert [e["data"]["phase"] for e in tap.of(rid)] == ["fail"]  # never accepted: no before
    with broker_conn() as c:
        dead = drain_queue(c, env.topology.dead_queue.name)
        assert len(dead) == 1
        m = dead[0]
        assert m.properties["message_id"] == rid
        assert m.properties.get("timestamp")  # kept: replay chooses dead letters by time
        assert m.headers["x-vmworker-error-code"] == code
        assert m.headers["x-vmworker-error-source"] == "validation"
        assert m.headers["x-vmworker-reason"] == d["error"]["message"][:1000]
        assert (m.body.encode() if isinstance(m.body, str) else m.body) == raw
        wait_depth(c, env.topology.host_queue.name, 0)
    # the worker keeps serving
    ok = env.publish("pause_vm", {"uuid": str(uuid.uuid4())})
    assert tap.wait_terminal(ok)["data"]["error"]["code"] == "no_domain"


def test_stop_of_unknown_vm_fails_and_is_dead_lettered(env, tap, start_worker):
    start_worker()
    vm = str(uuid.uuid4())
    rid = env.publish("shutdown_vm", {"uuid": vm})
    fail = tap.wait_terminal(rid)
    assert [e["data"]["phase"] for e in tap.of(rid)] == ["before", "fail"]
    err = fail["data"]["error"]
    assert (err["source"], err["code"], err["libvirt_code"]) == ("libvirt", "no_domain", 42)
    assert vm in err["message"]
    with broker_conn() as c:
        dead = drain_queue(c, env.topology.dead_queue.name)
    assert [m.properties["message_id"] for m in dead] == [rid]
    assert dead[0].headers["x-vmworker-error-code"] == "no_domain"


def test_message_without_message_id_is_rejected(env, tap, start_worker):
    from kombu import Producer

    start_worker()
    with broker_conn() as c, c.channel() as ch:
        Producer(ch).publish(
            json.dumps({"version": 1, "op": "pause_vm", "vm": {"uuid": VM}}),
            exchange=env.topology.ops,
            routing_key=env.host,
            content_type="application/json",
        )
    fail = tap.wait(lambda: [e for e in tap.events if e["data"].get("phase") == "fail"])[0]
    assert fail["data"]["error"]["code"] == "no_message_id"
    with broker_conn() as c:
        assert len(drain_queue(c, env.topology.dead_queue.name)) == 1


def test_past_deadline_fails_as_expired_without_running(env, tap, start_worker, test_domains):
    from datetime import UTC, datetime, timedelta

    start_worker()
    spec = {"uuid": str(uuid.uuid4()), "name": "vmw-expired", "vcpus": 1, "memory_mib": 64}
    test_domains.append(spec["uuid"])
    rid = env.publish("define_vm", spec, deadline=datetime.now(UTC) - timedelta(seconds=1))
    fail = tap.wait_terminal(rid)
    assert fail["data"]["error"]["source"] == "expired"
    import libvirt

    with pytest.raises(libvirt.libvirtError):
        libvirt.open("test:///default").lookupByUUIDString(spec["uuid"])
