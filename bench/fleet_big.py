"""The fleet bench's big store: `build_big_store` loads one directly (the bulk path, not the
broker), `query_times` times the fleet's questions on it. Used by bench/fleet.py.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Any

from bench.common import say, summary
from bench.fleet_gen import FAIL_EVERY, HEARTBEAT_S, OPS, iso
from bench.meter import rss_kib
from worker.fleet import queries as q
from worker.fleet import store as st
from worker.fleet.fold import _error_text


# -- the big store --------------------------------------------------------------------------------
def build_big_store(
    url: str,
    *,
    hosts: int = 1000,
    vms: int = 50_000,
    events: int = 5_000_000,
    now: float | None = None,
    seed: int = 7,
    progress: bool = False,
) -> dict[str, Any]:
    """Load a store at `url` directly (the bulk path, no broker) with `hosts` hosts (all up),
    `vms` VMs spread over them and `events` operation events (`events // 2` requests, each a
    `before` and an `after` or, one in FAIL_EVERY, a `fail` with a hook's stderr), over the
    last 7 days, the last hour at the busiest. Returns samples to query: request ids, VM
    uuids, host names, `now`."""
    rnd = random.Random(seed)
    now = time.time() if now is None else now
    engine = st.open_store(url)
    host_names = [f"host{i:05d}" for i in range(hosts)]
    vm_ids = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(vms)]
    vm_host = {v: host_names[i % hosts] for i, v in enumerate(vm_ids)}
    n_req = events // 2
    span = 7 * 86400.0
    samples: dict[str, Any] = {
        "request_ids": [],
        "vms": vm_ids[:: max(1, vms // 50)][:50],
        "hosts": host_names[:: max(1, hosts // 20)][:20],
        "now": now,
    }
    with engine.begin() as c:
        st.bulk_insert(
            c,
            st.hosts,
            (
                {
                    "host": h,
                    "status": "online",
                    "first_seen": now - span,
                    "last_seen": now - 5,
                    "interval_s": HEARTBEAT_S,
                    "version": "0.1.0",
                    "pid": 100,
                    "hb_seq": 1,
                    "libvirt": {"uri": "qemu:///system", "version": "9.0.0"},
                    "vms_total": vms // hosts,
                    "vms_by_state": {"running": vms // hosts},
                    "queue_depth": 0,
                    "outbox": 0,
                    "in_flight": 0,
                }
                for h in host_names
            ),
        )
        st.bulk_insert(
            c,
            st.vms,
            (
                {
                    "uuid": v,
                    "name": f"vm-{v[:8]}",
                    "host": vm_host[v],
                    "state": "running",
                    "state_at": now - 60,
                    "changed_at": now - 3600,
                    "op_at": now - 60,
                    "updated_at": now - 60,
                    "result": "ok",
                    "last_op": "start_vm",
                }
                for v in vm_ids
            ),
        )
    pick = max(1, n_req // 200)
    minutes: dict[tuple[str, int], list[int]] = {}
    chunk = 20_000
    done = 0
    t0 = time.monotonic()
    while done < n_req:
        reqs, evs = [], []
        for i in range(done, min(n_req, done + chunk)):
            # a tenth of the requests in the last hour, the rest over the week
            at = now - (rnd.random() * 3600 if i % 10 == 0 else rnd.random() * span)
            vm = vm_ids[rnd.randrange(vms)]
            host = vm_host[vm]
            op = OPS[i % len(OPS)]
            rid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
            fail = i % FAIL_EVERY == 0
            phase = "fail" if fail else "after"
            if i % pick == 0:
                samples["request_ids"].append(rid)
            err = (
                {
                    "code": "hook_failed",
                    "source": "hook",
                    "message": "50_gate failed (rc=2)",
                    "hook": "50_gate",
                    "stderr": f"pool {i % 97} locked",
                }
                if fail
                else {}
            )
            hook = {
                "name": "50_gate",
                "rc": 2 if fail else 0,
                "stderr_tail": err.get("stderr", ""),
                "stdout_tail": "ok",
            }
            text = "\n".join(x for x in (_error_text(err), err.get("stderr"), "ok") if x)
            reqs.append(
                {
                    "request_id": rid,
                    "at": at,
                    "host": host,
                    "vm_uuid": vm,
                    "vm_name": f"vm-{vm[:8]}",
                    "op": op,
                    "phase": phase,
                    "result": "failed" if fail else "ok",
                    "attempt": 1,
                    "duration_ms": 40.0,
                    "state": "running",
                    "error_code": err.get("code"),
                    "error_source": err.get("source"),
                    "error_message": err.get("message"),
                    "hook": "50_gate" if fail else None,
                    "duplicates": 0,
                    "published_at": at,
                    "started_at": at,
                    "finished_at": at + 0.04,
                    "updated_at": at + 0.04,
                    "text": text,
                }
            )
            for ph, t in (("before", at), (phase, at + 0.04)):
                data: dict[str, Any] = {
                    "op": op,
                    "phase": ph,
                    "host": host,
                    "vm": {"uuid": vm, "name": f"vm-{vm[:8]}"},
                    "request_id": rid,
                }
                if ph != "before":
                    data |= {"attempt": 1, "duration_ms": 40.0, "state": "running", "hooks": [hook]}
                    if fail:
                        data["error"] = err
                evs.append(
                    {
                        "at": t,
                        "type": f"vmworker.{op}.{ph}",
                        "kind": "op",
                        "host": host,
                        "vm_uuid": vm,
                        "request_id": rid,
                        "op": op,
                        "phase": ph,
                        "error_code": err.get("code") if ph == phase else None,
                        "duplicate": False,
                        "text": text if ph != "before" else None,
                        "event_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                        "body": {
                            "specversion": "1.0",
                            "type": f"vmworker.{op}.{ph}",
                            "source": f"vmworker://{host}",
                            "time": iso(t),
                            "subject": vm,
                            "requestid": rid,
                            "data": data,
                        },
                    }
                )
            for key in (host, st.FLEET):
                m = minutes.setdefault((key, int((at + 0.04) // 60)), [0, 0])
                m[0] += 1
                m[1] += fail
        with engine.begin() as c:
            st.bulk_insert(c, st.requests, reqs)
            st.bulk_insert(c, st.events, evs)
        done += len(reqs)
        if progress:
            say(f"big store: {done * 2:,} events ({time.monotonic() - t0:.0f} s)")
    with engine.begin() as c:
        st.bulk_insert(
            c,
            st.op_minutes,
            (
                {"host": h, "minute": k, "ops": v[0], "failed": v[1]}
                for (h, k), v in minutes.items()
            ),
        )
        c.exec_driver_sql("ANALYZE")  # the planner's statistics, as after a day of use
    engine.dispose()
    samples["load_s"] = time.monotonic() - t0
    return samples


def _timed(fn: Any, reps: list[Any]) -> dict[str, Any]:
    times = []
    for arg in reps:
        t = time.perf_counter()
        fn(arg)
        times.append((time.perf_counter() - t) * 1e3)
    return summary(times)


def query_times(url: str, samples: dict[str, Any]) -> dict[str, Any]:
    """Each query timed on the store at `url` (warm: each run twice, the second kept)."""
    engine = st.open_store(url, create=False)
    now = samples["now"]
    out: dict[str, Any] = {}
    with engine.connect() as c:
        rids, vms, hosts = samples["request_ids"][:100], samples["vms"], samples["hosts"]
        cases: dict[str, tuple[Any, list[Any]]] = {
            "request_history_ms": (lambda r: q.get_request(c, r), rids),
            "vm_history_ms": (lambda v: q.get_vm(c, v, limit=200), vms[:20]),
            "fleet_summary_ms": (lambda _: q.fleet_summary(c, now), [0] * 5),
            "hosts_page_ms": (lambda _: q.list_hosts(c, now=now, limit=50), [0] * 5),
            "host_page_ms": (lambda h: q.get_host(c, h, now=now), hosts[:10]),
            "vms_page_ms": (lambda _: q.list_vms(c, now=now, limit=50), [0] * 5),
            "requests_page_ms": (lambda _: q.list_requests(c, limit=50), [0] * 5),
            "requests_host_page_ms": (lambda h: q.list_requests(c, host=h, limit=50), hosts[:10]),
            "failures_page_ms": (lambda _: q.failures(c, since=now - 3600, limit=50), [0] * 5),
            "events_page_ms": (lambda _: q.list_events(c, limit=50), [0] * 5),
            "text_search_ms": (
                lambda _: q.list_requests(c, text="pool 13 locked", limit=50),
                [0] * 2,
            ),
        }
        for name, (fn, args) in cases.items():
            _timed(fn, args[:2])  # warm
            out[name] = _timed(fn, args)
    engine.dispose()
    mem = rss_kib(os.getpid())
    out["query_rss_mib"] = mem.get("VmRSS", 0) / 1024
    out["query_rss_peak_mib"] = mem.get("VmHWM", 0) / 1024
    return out
