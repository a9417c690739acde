"""Scale: many VMs on one worker process, and many slow operations at once.

- `vms_once`: the worker's RSS when idle, then `n` VMs defined and started on test:///default
  (the test driver lives in the worker's own process, so the VMs are in its RSS too), and the
  RSS after.
- `concurrent_once`: `n` operations on distinct VMs, each with a 200 ms `before_vm_start` hook,
  published at once; the time until the last `after` against the ideal for the configured
  concurrency, ceil(n / concurrency) x 200 ms.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from bench.common import (
    check_ok,
    hooks_root,
    rate,
    say,
    start_body,
    unique,
    write_hook,
)
from bench.meter import children_rss_kib, rss_kib
from bench.vmworker_ops import worker_running
from worker.config import Settings

HOOK_S = 0.2
SLEEP_HOOK = f"""#!/bin/sh
# a slow site hook: {HOOK_S * 1000:.0f} ms
sleep {HOOK_S}
"""


def vms_once(tmp: Path, n: int, idle_s: float = 2.0) -> dict[str, Any]:
    with worker_running(tmp) as (worker, tap, pub):
        time.sleep(idle_s)  # the observers and the first heartbeat settle
        idle = rss_kib(worker.pid)["VmRSS"]
        t0 = time.monotonic()
        rids = [pub.publish(start_body()) for _ in range(n)]
        seen = tap.wait_all(rids)
        elapsed = time.monotonic() - t0
        check_ok(seen)
        time.sleep(idle_s)
        loaded = rss_kib(worker.pid)
        helpers = children_rss_kib(worker.pid)
    out = {
        "vms": n,
        "rss_idle_mib": idle / 1024,
        "rss_loaded_mib": loaded["VmRSS"] / 1024,
        "rss_peak_mib": loaded["VmHWM"] / 1024,
        "helpers_rss_mib": helpers / 1024,
        "elapsed_s": elapsed,
        "ops_s": rate([s.at for s in seen]),
    }
    say(
        f"scale: {n} VMs in {elapsed:.1f} s; RSS idle {out['rss_idle_mib']:.1f} MiB,"
        f" with {n} VMs {out['rss_loaded_mib']:.1f} MiB"
    )
    return out


def concurrent_once(tmp: Path, n: int) -> dict[str, Any]:
    concurrency = Settings().concurrency
    run_dir = tmp / unique("bench-hooks")
    run_dir.mkdir(parents=True, exist_ok=True)
    root = hooks_root(run_dir)
    write_hook(root, "before_vm_start", "50_slow", SLEEP_HOOK)
    with worker_running(tmp, hooks_root=root) as (_, tap, pub):
        bodies = [start_body() for _ in range(n)]
        t0 = time.monotonic()
        rids = [pub.publish(b) for b in bodies]
        seen = tap.wait_all(rids)
        check_ok(seen)
        elapsed = max(s.at for s in seen) - t0
    ideal = math.ceil(n / concurrency) * HOOK_S
    out = {
        "ops": n,
        "concurrency": concurrency,
        "hook_ms": HOOK_S * 1e3,
        "elapsed_s": elapsed,
        "ideal_s": ideal,
        "ratio": elapsed / ideal,
    }
    say(f"scale: {n} x 200 ms-hook ops in {elapsed:.2f} s (ideal {ideal:.2f} s)")
    return out
