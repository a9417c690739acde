"""Per-VM order and cross-VM parallelism through the real worker: operations on one VM run one
at a time in arrival order, different VMs run at once (up to `concurrency`), and a slow VM does
not hold the others up."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import pytest

from tests.reliability import SLEEP_HOOK
from tests.support import broker_conn, write_hook
from worker.publish import build_body, publish_op

pytestmark = pytest.mark.timeout(90)

SEQUENCE = ["define_vm", "start_vm", "pause_vm", "resume_vm", "destroy_vm"]
POINTS = [
    "before_vm_define",
    "before_vm_start",
    "before_vm_pause",
    "before_vm_cont",
    "before_vm_destroy",
]


def _t(ev: dict) -> float:
    return datetime.fromisoformat(ev["time"].replace("Z", "+00:00")).timestamp()


def test_50_ops_on_10_vms_keep_per_vm_order_and_run_in_parallel(
    env, tap, hooks_root, start_worker, test_domains
):
    for point in POINTS:
        write_hook(hooks_root, point, "50_sleep", SLEEP_HOOK)
    start_worker(concurrency=8)
    vms = [
        {
            "uuid": str(uuid.uuid4()),
            "name": f"vmw-ord-{i}-{uuid.uuid4().hex[:6]}",
            "vcpus": 1,
            "memory_mib": 64,
        }
        for i in range(10)
    ]
    slow_vm = {
        "uuid": str(uuid.uuid4()),
        "name": f"vmw-slow-{uuid.uuid4().hex[:6]}",
        "vcpus": 1,
        "memory_mib": 64,
    }
    test_domains.extend(v["uuid"] for v in [*vms, slow_vm])
    sent: dict[str, list[str]] = {v["uuid"]: [] for v in vms}
    t0 = time.monotonic()
    with broker_conn() as c:
        slow = publish_op(c, env.topology, build_body("define_vm", slow_vm, None, {"sleep_s": "8"}))
        for op in SEQUENCE:  # interleaved: every VM's first op, then every VM's second, ...
            for v in vms:
                vm = v if op == "define_vm" else {"uuid": v["uuid"]}
                body = build_body(op, vm, None, {"sleep_s": "0.5"})
                sent[v["uuid"]].append(publish_op(c, env.topology, body))
    rids = [r for rs in sent.values() for r in rs]
    tap.wait(lambda: all(tap.terminal(r) for r in rids), timeout=60)
    elapsed = time.monotonic() - t0
    assert not tap.terminal(slow)  # the slow VM is still busy; nobody waited for it
    slow_term = tap.wait_terminal(slow, timeout=30)

    ops = [e for e in tap.events if e["data"].get("phase") in ("before", "after", "fail")]
    for vm_uuid, expected in sent.items():
        mine = [e for e in ops if e["subject"] == vm_uuid]
        # one at a time, in publish order: before, terminal, before, terminal, ...
        assert [e["requestid"] for e in mine] == [r for r in expected for _ in (0, 1)]
        assert [e["data"]["phase"] for e in mine] == ["before", "after"] * len(SEQUENCE), [
            (e["data"]["op"], e["data"]["phase"], e["data"].get("error")) for e in mine
        ]
    # how many ran at once: sweep over [before, terminal] intervals
    edges = sorted(
        [
            (_t(e), 1 if e["data"]["phase"] == "before" else -1)
            for e in ops
            if e["requestid"] in rids
        ]
    )
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    print(
        f"order: 50 ops on 10 VMs in {elapsed:.1f}s (serial 25s), peak parallel {peak},"
        f" slow VM done {slow_term['data']['duration_ms'] / 1000:.1f}s"
    )
    assert elapsed < 12, elapsed  # serial would be 50 x 0.5 s = 25 s
    assert peak >= 4
