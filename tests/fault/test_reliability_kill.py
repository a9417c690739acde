"""kill -9 of the worker process at the worst moments, and a message that kills it every time.

After a restart every request has exactly one `before` and exactly one terminal event (seen by a
subscriber bound from the start), the domain is in the requested state, and a message that keeps
killing the worker ends in the dead-letter queue, dead-lettered by the broker."""

from __future__ import annotations

import contextlib
import json
import time

import libvirt
import pytest

from handlers.base import domain_state
from handlers.domxml import build_domain_xml
from handlers.spec import VmSpec
from tests.reliability import (
    POISON_HOOK,
    SLEEP_HOOK,
    finish_after_restart,
    journal_rows,
    kill_sleepers,
    tally,
    window_hooks,
    write_hook,
)
from tests.support import (
    QEMU_URI,
    ProcessWorker,
    broker_conn,
    drain_queue,
    queue_depth,
    small_vm,
    wait_depth,
    wait_for,
)

pytestmark = [pytest.mark.fault]


@pytest.mark.qemu
@pytest.mark.timeout(150)
def test_kill9_in_before_hook_libvirt_call_and_after_hook_runs_each_op_once(
    env, tap, hooks_root, tmp_path, qemu_domains
):
    marks = tmp_path / "marks"
    marks.mkdir()
    window_hooks(hooks_root, "before_vm_start", "after_vm_start", "before_vm_shutdown")
    conn = libvirt.open(QEMU_URI)
    a, b, c = small_vm("kb"), small_vm("kc"), small_vm("ka")
    qemu_domains.extend(v["uuid"] for v in (a, b, c))
    conn.defineXML(build_domain_xml(VmSpec.model_validate(b))).create()  # B runs, no guest OS
    settings = dict(libvirt_uri=QEMU_URI, hook_timeout=60)
    w = ProcessWorker(env, tmp_path / "worker.log", **settings).start()
    try:
        m = str(marks)
        # A sleeps in its before hook; C sleeps in its after hook (libvirt has started it)
        rid_a = env.publish("start_vm", a, custom={"mark_dir": m, "slow_before_vm_start": "60"})
        rid_c = env.publish("start_vm", c, custom={"mark_dir": m, "slow_after_vm_start": "60"})
        wait_for(lambda: (marks / f"before_vm_start-{a['uuid']}").exists(), 30, "A in its hook")
        wait_for(lambda: (marks / f"after_vm_start-{c['uuid']}").exists(), 30, "C after call")
        # B: an ACPI shutdown a guest without an OS ignores; the handler waits in its call
        rid_b = env.publish(
            "shutdown_vm",
            {"uuid": b["uuid"]},
            params={"timeout": 4, "force": True},
            custom={"mark_dir": m},
        )
        wait_for(lambda: _hook_ran(w, "before_vm_shutdown", b["uuid"]), 30, "B in its call")
        assert domain_state(conn.lookupByUUIDString(b["uuid"])) == "running"  # still in call
        assert domain_state(conn.lookupByUUIDString(c["uuid"])) == "running"  # call done
        w.kill9()
        rids = [rid_a, rid_b, rid_c]
        rows = journal_rows(env.state_dir)
        assert {rows[r]["state"] for r in rids} == {"started"}
        assert all(tap.terminal(r) == [] for r in rids)  # nothing finished before the kill
        payloads = env.state_dir / "payload"
        left = sorted(p.name.rsplit("-", 1)[0] for p in payloads.iterdir())
        assert left == ["vmworker-after_vm_start", "vmworker-before_vm_start"]  # A's and C's

        finish_after_restart(env, tap, tmp_path / "worker2.log", rids, **settings)
        assert list(payloads.iterdir()) == []  # the restarted worker removed what was left
    finally:
        if w.proc is not None and w.proc.poll() is None:
            w.kill9()
        kill_sleepers(marks)
    t = tally(tap.events, rids)
    print(f"kill -9 (3 windows): {t}")
    assert t["lost"] == [] and t["twice"] == [] and t["no_before"] == []
    for r in rids:
        (term,) = tap.terminal(r)
        assert term["data"]["phase"] == "after" and term["data"]["recovered"] is True, term
    assert tap.terminal(rid_c)[0]["data"]["noop"] is True  # had taken effect: not run again
    assert tap.terminal(rid_a)[0]["data"]["noop"] is False  # had not: ran again
    assert domain_state(conn.lookupByUUIDString(a["uuid"])) == "running"
    assert domain_state(conn.lookupByUUIDString(b["uuid"])) == "shutoff"
    assert domain_state(conn.lookupByUUIDString(c["uuid"])) == "running"
    with broker_conn() as bc:
        wait_depth(bc, env.topology.host_queue.name, 0)


def _hook_ran(w: ProcessWorker, point: str, vm: str) -> bool:
    """The worker logged that `point`'s chain ran its hook for `vm` (its next step: libvirt)."""
    for line in w.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if (rec.get("event"), rec.get("point"), rec.get("vm_id")) == ("hook.ran", point, vm):
                return True
    return False


def _dies_before_dead_lettering(w: ProcessWorker, env) -> bool:  # type: ignore[no-untyped-def]
    """Wait until the worker process dies (True) or the message is in the dead-letter queue."""
    assert w.proc is not None
    proc = w.proc
    with broker_conn() as c:
        dead = env.topology.dead_queue.name
        wait_for(
            lambda: proc.poll() is not None or queue_depth(c, dead),
            30,
            "the worker to die or dead-letter the poison",
            interval=0.1,
        )
    return proc.poll() is not None


@pytest.mark.timeout(120)
def test_message_that_kills_the_worker_every_time_is_dead_lettered_by_the_broker(
    env, tap, hooks_root, tmp_path
):
    limit = 2
    write_hook(hooks_root, "before_vm_start", "10_poison", POISON_HOOK)
    spec = small_vm("poison")
    rid = ""
    deaths, starts = 0, 0
    w = None
    try:
        while True:
            w = ProcessWorker(env, tmp_path / f"worker{starts}.log", delivery_limit=limit)
            w.start()
            starts += 1
            if not rid:  # once the worker has declared its queue
                rid = env.publish("start_vm", spec, custom={"poison": "1"})
            if _dies_before_dead_lettering(w, env):
                deaths += 1
                w.kill9()
                assert deaths <= limit + 1, "the broker did not dead-letter it"
                continue
            break
        # the worker serves the next message
        ok = env.publish("start_vm", small_vm("after-poison"))
        assert tap.wait_terminal(ok)["data"]["phase"] == "after"
        # and what the poison left in the journal got its terminal event at start-up
        fail = tap.wait_terminal(rid)["data"]
        w.stop()
    finally:
        if w is not None and w.proc is not None and w.proc.poll() is None:
            w.kill9()
    assert deaths == limit + 1  # x-delivery-limit N: delivered N + 1 times, then dead-lettered
    with broker_conn() as c:
        (msg,) = drain_queue(c, env.topology.dead_queue.name)
    assert msg.properties["message_id"] == rid
    assert msg.headers["x-first-death-reason"] == "delivery_limit"
    assert fail["phase"] == "fail" and fail["error"]["code"] == "delivery_limit"
    t = tally(tap.events, [rid])
    print(f"poison: deaths={deaths} {t}")
    assert t["twice"] == [] and t["lost"] == [] and t["no_before"] == []
    assert journal_rows(env.state_dir)[rid]["runs"] == limit + 1


@pytest.mark.timeout(90)
def test_sigterm_mid_operation_finishes_it_publishes_acks_and_exits_0(
    env, tap, hooks_root, tmp_path
):
    write_hook(hooks_root, "before_vm_define", "50_sleep", SLEEP_HOOK)
    a, b = small_vm("term-a"), small_vm("term-b")
    w = ProcessWorker(env, tmp_path / "worker.log").start()
    slow = {"sleep_s": "3"}
    a1 = env.publish("define_vm", a, custom=slow)
    a2 = env.publish("define_vm", a)  # queued behind a1: not started when the signal comes
    b1 = env.publish("define_vm", b, custom=slow)
    tap.wait(lambda: tap.of(a1) and tap.of(b1))  # both running
    t0 = time.monotonic()
    rc = w.stop(timeout=30)  # SIGTERM
    print(f"sigterm: exited {rc} after {time.monotonic() - t0:.1f}s")
    assert rc == 0
    for rid in (a1, b1):
        assert [e["data"]["phase"] for e in tap.of(rid)] == ["before", "after"]
    assert tap.of(a2) == []
    with broker_conn() as c:
        wait_depth(c, env.topology.host_queue.name, 1)  # a2 is back in the queue
    w = ProcessWorker(env, tmp_path / "worker2.log").start()
    try:
        assert tap.wait_terminal(a2)["data"]["phase"] == "after"
    finally:
        w.stop()
    t = tally(tap.events, [a1, a2, b1])
    assert t["lost"] == [] and t["twice"] == [] and t["duplicates"] == 0
