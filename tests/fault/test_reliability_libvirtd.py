"""libvirtd killed (SIGKILL) and restarted in the middle of an operation: the worker reconnects,
retries the call with backoff, the operation succeeds and its event counts the attempts.

This touches the host's shared libvirtd: the outage is kept under 5 s and libvirtd is always
restarted, whatever happens to the test."""

from __future__ import annotations

import time

import libvirt
import pytest

from handlers.base import domain_state
from tests.reliability import (
    kill_libvirtd,
    kill_sleepers,
    start_libvirtd,
    tally,
    window_hooks,
)
from tests.support import QEMU_URI, small_vm, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.qemu, pytest.mark.timeout(120)]


def test_libvirtd_killed_during_an_operation_is_retried_until_it_succeeds(
    env, tap, hooks_root, tmp_path, qemu_domains, start_worker
):
    marks = tmp_path / "marks"
    marks.mkdir()
    window_hooks(hooks_root, "before_vm_start")
    retry = {"default": {"attempts": 10, "initial_s": 0.3, "max_backoff_s": 2, "deadline_s": 60}}
    start_worker(libvirt_uri=QEMU_URI, retry=retry)
    vm = small_vm("lvd")
    qemu_domains.append(vm["uuid"])
    rid = env.publish("start_vm", vm, custom={"mark_dir": str(marks), "slow_before_vm_start": "1"})
    try:
        wait_for(lambda: (marks / f"before_vm_start-{vm['uuid']}").exists(), 30, "the hook")
        t_kill = time.monotonic()
        kill_libvirtd()  # while the before hook runs: the call that follows finds it gone
        time.sleep(2)
    finally:
        t_start = time.monotonic()
        start_libvirtd()
        down, outage = t_start - t_kill, time.monotonic() - t_kill
        kill_sleepers(marks)
    term = tap.wait_terminal(rid, timeout=60)["data"]
    t = tally(tap.events, [rid])
    print(
        f"libvirtd restart: killed for {down:.1f}s, answering again after {outage:.1f}s,"
        f" attempt={term['attempt']} {t}"
    )
    assert term["phase"] == "after", term.get("error")
    assert term["attempt"] > 1
    assert t["twice"] == [] and t["lost"] == []
    conn = libvirt.open(QEMU_URI)
    assert domain_state(conn.lookupByUUIDString(vm["uuid"])) == "running"
