"""Each lifecycle op through the real worker, real RabbitMQ and libvirt's test:///default."""

from __future__ import annotations

import json
import uuid

import libvirt
import pytest

from tests.support import broker_conn, read_stream, small_vm, wait_depth


def _run(env, tap, op, vm, **kw):  # type: ignore[no-untyped-def]
    rid = env.publish(op, vm, **kw)
    term = tap.wait_terminal(rid)
    events = tap.of(rid)
    return rid, term, events


def test_lifecycle_ops_publish_before_then_after_in_order(env, tap, start_worker, test_domains):
    start_worker()
    spec = small_vm("lc", memory_mib=128)
    test_domains.append(spec["uuid"])
    ref = {"uuid": spec["uuid"], "name": spec["name"]}
    steps = [
        ("define_vm", spec, None, "shutoff"),
        ("start_vm", ref, None, "running"),
        ("pause_vm", ref, None, "paused"),
        ("resume_vm", ref, None, "running"),
        ("reboot_vm", ref, None, "running"),
        ("shutdown_vm", ref, {"timeout": 5, "force": True}, "shutoff"),
        ("start_vm", ref, {"paused": True}, "paused"),
        ("destroy_vm", ref, None, "shutoff"),
        ("undefine_vm", ref, None, "undefined"),
    ]
    conn = libvirt.open("test:///default")
    for op, vm, params, state in steps:
        rid, term, events = _run(env, tap, op, vm, params=params, correlation_id="corr-1")
        phases = [e["data"]["phase"] for e in events]
        assert phases == ["before", "after"], (op, phases, term["data"].get("error"))
        before, after = events
        assert before["_routing_key"] == f"{env.host}.{op}.before"
        assert after["_routing_key"] == f"{env.host}.{op}.after"
        assert after["type"] == f"vmworker.{op}.after"
        assert after["source"] == f"vmworker://{env.host}"
        assert after["subject"] == spec["uuid"]
        assert after["specversion"] == "1.0"
        d = after["data"]
        assert d["state"] == state, op
        assert d["request_id"] == rid and d["correlation_id"] == "corr-1"
        assert d["vm"]["uuid"] == spec["uuid"]
        assert d["attempt"] == 1 and d["redelivered"] is False
        if state == "undefined":
            with pytest.raises(libvirt.libvirtError):
                conn.lookupByUUIDString(spec["uuid"])
        else:
            dom = conn.lookupByUUIDString(spec["uuid"])
            from handlers.base import domain_state

            assert domain_state(dom) == state
    with broker_conn() as c:
        wait_depth(c, env.topology.host_queue.name, 0)
        wait_depth(c, env.topology.dead_queue.name, 0)


def test_start_of_running_vm_is_a_noop_success(env, tap, start_worker, test_domains):
    start_worker()
    spec = small_vm("lc", memory_mib=128)
    test_domains.append(spec["uuid"])
    _, term, _ = _run(env, tap, "start_vm", spec)
    assert term["data"]["state"] == "running" and not term["data"]["noop"]
    _, term, _ = _run(env, tap, "start_vm", {"uuid": spec["uuid"]})
    assert term["data"]["phase"] == "after"
    assert term["data"]["noop"] is True and term["data"]["state"] == "running"
    _, term, _ = _run(env, tap, "destroy_vm", {"uuid": spec["uuid"]})
    _, term, _ = _run(env, tap, "destroy_vm", {"uuid": spec["uuid"]})
    assert term["data"]["phase"] == "after" and term["data"]["noop"] is True
    assert term["data"]["state"] == "shutoff"


def test_start_vm_defines_from_spec_when_given(env, tap, start_worker, test_domains):
    start_worker()
    spec = small_vm("lc", memory_mib=256, vcpus=2)
    test_domains.append(spec["uuid"])
    _, term, _ = _run(env, tap, "start_vm", spec)
    assert term["data"]["state"] == "running"
    dom = libvirt.open("test:///default").lookupByUUIDString(spec["uuid"])
    assert dom.isPersistent() and dom.name() == spec["name"]
    assert dom.maxMemory() == 256 * 1024


def test_every_operation_message_is_kept_in_the_ops_log_stream(env, tap, start_worker):
    start_worker()
    rid = env.publish("pause_vm", {"uuid": str(uuid.uuid4())})
    tap.wait_terminal(rid)
    with broker_conn() as c:
        ops = read_stream(c, f"{env.prefix}.ops.log")
        evs = read_stream(c, f"{env.prefix}.events.log")
    assert [m.properties["message_id"] for m in ops] == [rid]
    op_events = [e for e in (json.loads(m.body) for m in evs) if e.get("requestid") == rid]
    assert [e["data"]["phase"] for e in op_events] == ["before", "fail"]
