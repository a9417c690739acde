"""The publisher allowlist (settings.allowed_publishers) on the real broker: RabbitMQ vouches for
the `user_id` property (it refuses a publish whose user_id is not the connection's user), the
worker accepts only listed publishers; anything else fails as `unauthorized`, is dead-lettered
and never run."""

from __future__ import annotations

import uuid

import libvirt
import pytest
from kombu import Connection

from tests.support import broker_conn, drain_queue, small_vm, unique, wait_depth
from worker.publish import build_body, publish_op
from worker.topology import Topology

pytestmark = pytest.mark.timeout(120)


def test_operations_from_publishers_not_allowed_are_dead_lettered_and_never_run(
    env, tap, start_worker, test_domains, identities
):
    start_worker(allowed_publishers=["guest"])
    stranger = unique("cp")
    url = identities.grant("--control-plane", stranger, "--prefix", env.prefix)
    passive = Topology(env.prefix, env.host, passive=True)
    vms = [small_vm("allow") for _ in range(4)]
    test_domains.extend(str(v["uuid"]) for v in vms)
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        not_listed = publish_op(conn, passive, build_body("define_vm", vms[0]), user_id=stranger)
        garbage = publish_op(conn, passive, b"{not json", user_id=stranger)
        unsigned = publish_op(conn, passive, build_body("define_vm", vms[1]))  # no user_id
    allowed = env.publish("define_vm", vms[2], user_id="guest")
    without = env.publish("define_vm", vms[3])  # guest, but no user_id: not vouched for

    assert tap.wait_terminal(allowed)["data"]["phase"] == "after"  # the control: it does run
    lv = libvirt.open("test:///default")
    for rid, vm in ((not_listed, vms[0]), (unsigned, vms[1]), (without, vms[3]), (garbage, None)):
        term = tap.wait_terminal(rid)
        assert term["data"]["phase"] == "fail"
        assert term["data"]["error"]["code"] == "unauthorized", term["data"]["error"]
        assert term["data"]["error"]["source"] == "unauthorized"
        assert [e["data"]["phase"] for e in tap.of(rid)] == ["fail"]  # no `before`: never run
        if vm is not None:
            with pytest.raises(libvirt.libvirtError):
                lv.lookupByUUIDString(str(vm["uuid"]))
    lv.lookupByUUIDString(str(vms[2]["uuid"]))  # the allowed one was defined
    lv.close()

    with broker_conn() as conn:
        dead = drain_queue(conn, env.topology.dead_queue.name, expect=4)
        wait_depth(conn, env.topology.host_queue.name, 0)
    by_id = {m.properties.get("message_id"): m.headers for m in dead}
    assert set(by_id) == {not_listed, garbage, unsigned, without}
    for rid in by_id:
        assert by_id[rid]["x-vmworker-error-code"] == "unauthorized"
    assert by_id[not_listed]["x-original-user-id"] == stranger
    assert by_id[unsigned]["x-original-user-id"] == ""


def test_a_forged_user_id_is_refused_by_the_broker_and_never_reaches_the_worker(
    env, tap, start_worker, test_domains
):
    trusted = unique("cp")
    start_worker(allowed_publishers=[trusted, "guest"])
    vm = small_vm("allow")
    test_domains.append(str(vm["uuid"]))
    rid = str(uuid.uuid4())
    with pytest.raises(Exception) as refused:  # guest claiming to be the trusted control plane
        env.publish("define_vm", vm, user_id=trusted, request_id=rid)
    assert getattr(refused.value, "reply_code", None) == 406, refused.value
    assert "PRECONDITION_FAILED" in str(refused.value)

    # published after the forgery, for the same VM: had the forgery been queued, it would have
    # run (and had its events) before this one, as a VM's operations run in arrival order
    control = env.publish("undefine_vm", {"uuid": vm["uuid"]}, user_id="guest")
    assert tap.wait_terminal(control)["data"]["noop"] is True  # nothing was ever defined
    assert tap.of(rid) == []
    with broker_conn() as conn:
        wait_depth(conn, env.topology.host_queue.name, 0)
        wait_depth(conn, env.topology.dead_queue.name, 0)
    lv = libvirt.open("test:///default")
    with pytest.raises(libvirt.libvirtError):
        lv.lookupByUUIDString(str(vm["uuid"]))
    lv.close()
