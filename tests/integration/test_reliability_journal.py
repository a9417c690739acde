"""The journal's guarantees through the real worker (real RabbitMQ, libvirt test:///default):
a finished request never runs twice, an unfinished one is reconciled against libvirt, what the
journal left unfinished is dealt with at start-up, and the journal does not grow for ever."""

from __future__ import annotations

import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import libvirt
import pytest

from handlers.base import domain_state
from tests.reliability import SLEEP_HOOK, journal_rows, write_hook
from tests.support import broker_conn, drain_queue, queue_depth, small_vm, wait_depth, wait_for
from worker import events
from worker.journal import FINISHED, STARTED, Journal

pytestmark = pytest.mark.timeout(90)


def _seed_started(env, rid: str, op: str, vm: str, **journal_kw) -> None:  # type: ignore[no-untyped-def]
    """What a worker killed mid-operation leaves behind: the request started, its `before`
    event queued in the outbox, no terminal event."""
    j = Journal(env.state_dir / "journal.sqlite")
    try:
        j.receive(rid, op, vm)
        j.start(
            rid,
            events.op_event(
                env.host,
                op,
                "before",
                request_id=rid,
                correlation_id=None,
                vm_uuid=vm,
                vm_name=None,
                redelivered=False,  # a `before` as the worker writes it
                recovered=False,
            ),
        )
        if journal_kw.get("final_delivery"):
            j.mark_final_delivery(rid)
    finally:
        j.close()


def test_redelivered_finished_request_republishes_its_terminal_event_marked_duplicate(
    env, tap, start_worker, test_domains
):
    start_worker()
    spec = small_vm("j", memory_mib=128)
    test_domains.append(spec["uuid"])
    rid = env.publish("define_vm", spec)
    first = tap.wait_terminal(rid)
    assert first["data"]["phase"] == "after"
    env.publish("define_vm", spec, request_id=rid)  # the same message again
    dup = tap.wait(
        lambda: [
            e for e in tap.terminal(rid, include_duplicates=True) if e["data"].get("duplicate")
        ]
    )[0]
    assert dup["data"]["original_event_id"] == first["id"] and dup["id"] != first["id"]
    assert dup["data"]["phase"] == "after"
    assert [e["data"]["phase"] for e in tap.of(rid)] == ["before", "after", "after"]
    assert journal_rows(env.state_dir)[rid]["runs"] == 1
    with broker_conn() as c:
        wait_depth(c, env.topology.host_queue.name, 0)
        wait_depth(c, env.topology.dead_queue.name, 0)


def test_started_unfinished_request_is_reconciled_against_the_domain_state(
    env, tap, start_worker, test_domains
):
    conn = libvirt.open("test:///default")
    from handlers.domxml import build_domain_xml
    from handlers.spec import VmSpec

    running, stopped = small_vm("run", memory_mib=128), small_vm("stop", memory_mib=128)
    for s in (running, stopped):
        test_domains.append(s["uuid"])
        conn.defineXML(build_domain_xml(VmSpec.model_validate(s)))
    conn.lookupByUUIDString(running["uuid"]).create()
    rid_running, rid_stopped = str(uuid.uuid4()), str(uuid.uuid4())
    _seed_started(env, rid_running, "start_vm", running["uuid"])
    _seed_started(env, rid_stopped, "start_vm", stopped["uuid"])

    start_worker()
    env.publish("start_vm", {"uuid": running["uuid"]}, request_id=rid_running)
    env.publish("start_vm", {"uuid": stopped["uuid"]}, request_id=rid_stopped)
    done = tap.wait_terminal(rid_running)["data"]
    again = tap.wait_terminal(rid_stopped)["data"]
    # already running: the crashed run had taken effect, nothing runs again
    assert done["phase"] == "after" and done["recovered"] is True and done["noop"] is True
    # still stopped: it runs again, and says it is a recovery
    assert again["phase"] == "after" and again["recovered"] is True and again["noop"] is False
    for rid in (rid_running, rid_stopped):
        assert [e["data"]["phase"] for e in tap.of(rid)] == ["before", "after"]  # one `before`
    for s in (running, stopped):
        assert domain_state(conn.lookupByUUIDString(s["uuid"])) == "running"
    rows = journal_rows(env.state_dir)
    assert rows[rid_running]["state"] == rows[rid_stopped]["state"] == FINISHED


def test_startup_fails_what_crashed_on_its_last_delivery_and_keeps_the_rest(env, tap, start_worker):
    vm = str(uuid.uuid4())
    lost, pending = str(uuid.uuid4()), str(uuid.uuid4())
    _seed_started(env, lost, "start_vm", vm, final_delivery=True)
    _seed_started(env, pending, "pause_vm", vm)
    start_worker()
    fail = tap.wait_terminal(lost)["data"]
    assert fail["phase"] == "fail" and fail["error"]["code"] == "delivery_limit"
    assert fail["error"]["source"] == "internal" and fail["recovered"] is True
    rows = journal_rows(env.state_dir)
    assert rows[lost]["state"] == FINISHED
    # its message may still come back: it stays unfinished, to be reconciled then
    assert rows[pending]["state"] == STARTED
    assert tap.terminal(pending) == []


def test_journal_forgets_requests_older_than_the_retention_at_start(env, start_worker):
    j = Journal(env.state_dir / "journal.sqlite")
    for rid in ("old-finished", "old-unfinished", "recent"):
        j.receive(rid, "pause_vm", str(uuid.uuid4()))
    j.finish("old-finished", "after", ("k", {"id": "e1", "data": {}}))
    j.finish("recent", "after", ("k", {"id": "e2", "data": {}}))
    j.enqueue("k", {"id": "unsent", "data": {}})
    old = time.time() - 3 * 86400
    with j._tx() as db:
        db.execute("UPDATE requests SET updated_at=? WHERE request_id LIKE 'old-%'", (old,))
    j.close()
    start_worker(journal_retention_days=2)
    assert set(journal_rows(env.state_dir)) == {"recent"}


def test_past_deadline_fails_as_expired_in_its_turn_without_running(
    env, tap, start_worker, hooks_root, test_domains
):
    write_hook(hooks_root, "before_vm_define", "50_sleep", SLEEP_HOOK)
    start_worker()
    spec = small_vm("j", memory_mib=128)
    test_domains.append(spec["uuid"])
    slow = env.publish("define_vm", spec, custom={"sleep_s": "2"})
    # valid when it arrives, past due by the time the slow op on the same VM is done
    late = env.publish("define_vm", spec, deadline=datetime.now(UTC) + timedelta(seconds=1))
    stale = env.publish("define_vm", spec, deadline=datetime.now(UTC) - timedelta(seconds=5))
    for rid in (late, stale):
        fail = tap.wait_terminal(rid)["data"]
        assert fail["phase"] == "fail" and fail["error"]["code"] == "expired"
        assert fail["error"]["source"] == "expired"
        assert [e["data"]["phase"] for e in tap.of(rid)] == ["fail"]  # never started
    order = [e["requestid"] for e in tap.events if e["data"].get("phase") in ("after", "fail")]
    assert order == [slow, late, stale]  # per-VM order holds for expired ones too
    with broker_conn() as c:
        wait_depth(c, env.topology.dead_queue.name, 0)  # expired is not poison
        wait_depth(c, env.topology.host_queue.name, 0)
    assert journal_rows(env.state_dir)[late]["runs"] == 0


def test_worker_redeclares_its_queue_and_carries_on_when_the_queue_is_deleted(
    env, tap, start_worker
):
    w = start_worker()
    first = env.publish("pause_vm", {"uuid": str(uuid.uuid4())})
    tap.wait_terminal(first)
    with broker_conn() as c, c.channel() as ch:
        ch.queue_delete(env.topology.host_queue.name)

    def queue_is_back() -> bool:
        try:
            with broker_conn() as c:
                queue_depth(c, env.topology.host_queue.name)
        except Exception:  # NOT_FOUND until the worker declares it again
            return False
        return True

    wait_for(queue_is_back, 20, "the worker to declare its queue again", interval=0.2)
    after = env.publish("pause_vm", {"uuid": str(uuid.uuid4())})
    assert tap.wait_terminal(after)["data"]["error"]["code"] == "no_domain"
    assert w.thread.is_alive()


def test_worker_fails_over_past_a_dead_broker_url(env, tap, start_worker):
    from tests.brokers import free_port
    from tests.support import BROKER

    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    start_worker(broker=f"{dead};{BROKER}")
    rid = env.publish("pause_vm", {"uuid": str(uuid.uuid4())})
    assert tap.wait_terminal(rid)["data"]["phase"] == "fail"


def test_amqp_heartbeats_keep_flowing_during_a_slow_hook(
    env, tap, start_worker, hooks_root, test_domains
):
    write_hook(hooks_root, "before_vm_define", "50_sleep", SLEEP_HOOK)
    w = start_worker(amqp_heartbeat=2, hook_timeout=30)
    spec = small_vm("j", memory_mib=128)
    test_domains.append(spec["uuid"])
    rid = env.publish("define_vm", spec, custom={"sleep_s": "10"})
    tap.wait(lambda: tap.of(rid))  # the hook is running
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "timeout", "client_properties"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert any(line.startswith("2\t") for line in out.splitlines()), out[-2000:]  # negotiated
    term = tap.wait_terminal(rid, timeout=40)
    assert term["data"]["phase"] == "after"
    assert term["data"]["hooks"][0]["duration_ms"] > 9000
    assert w.service.stats.reconnects == 0  # five heartbeat periods: the connection lived
    with broker_conn() as c:
        wait_depth(c, env.topology.host_queue.name, 0)


def test_a_message_that_fails_is_dead_lettered_with_its_reason(env, tap, start_worker):
    start_worker()
    rid = env.publish("pause_vm", {"uuid": str(uuid.uuid4())})
    assert tap.wait_terminal(rid)["data"]["error"]["code"] == "no_domain"
    with broker_conn() as c:
        dead = drain_queue(c, env.topology.dead_queue.name)
    assert [m.properties["message_id"] for m in dead] == [rid]
    assert dead[0].headers["x-vmworker-error-code"] == "no_domain"
    assert dead[0].headers["x-vmworker-error-source"] == "libvirt"
