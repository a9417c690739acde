"""The fleet store at scale: `python -m bench.fleet [--smoke]`, or the `fleet` part of bench.run.

Two measurements, on SQLite and on PostgreSQL:

- **Ingest**: a generator publishes the events of N simulated hosts (a heartbeat per host every
  30 s, the default; operations at a given rate, each an ops log message, a `before` and an
  `after` or `fail` event with a hook's result, every 20th failing; a state event per 10
  operations) to the real broker under its own prefix, while `python -m worker.fleet.ingest`
  follows both streams into the store. Measured: how fast it catches up with a backlog
  (messages/s, its CPU per message), then whether it keeps up with the live rate (the backlog,
  sampled, as seconds of lag), its CPU and its memory.
- **Queries on a big store**: `build_big_store` loads a store directly (the bulk path, not
  the broker) with H hosts, V VMs and E events (E/2 requests); a separate process then times
  a request's history (`get_request`), a VM's, the fleet summary, the first pages of the lists,
  and reports its memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from kombu import Connection, Producer

from bench.common import BROKER, REPO, Process, delete_topology, say, summary, unique
from bench.meter import cpu_seconds, rss_kib
from worker.fleet import queries as q
from worker.fleet import store as st
from worker.fleet.fold import _error_text
from worker.topology import Topology

PG_ADMIN = os.environ.get(
    "VMWORKER_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
HEARTBEAT_S = 30.0
FAIL_EVERY = 20
OPS = ("start_vm", "stop_vm", "pause_vm", "resume_vm", "set_memory", "attach_disk")


# hosts, ops/s, seconds of live load, backlog, and the big store's hosts, VMs, events
_FULL = (5000, 200, 60.0, 100_000, 1000, 50_000, 5_000_000)
_SMOKE = (60, 10, 2.0, 1000, 20, 400, 10_000)
_KEYS = ("hosts", "ops_s", "live_s", "backlog", "big_hosts", "big_vms", "big_events")


def params(smoke: bool) -> dict[str, Any]:
    return dict(zip(_KEYS, _SMOKE if smoke else _FULL, strict=True))


def iso(t: float) -> str:
    return q.iso(t) or ""


# -- the generator ----------------------------------------------------------------------------
class Fleet:
    """N simulated hosts, with VMs, publishing what real ones would."""

    def __init__(self, prefix: str, hosts: int, vms_per_host: int = 10) -> None:
        self.prefix = prefix
        self.hosts = [f"bhost{i:05d}" for i in range(hosts)]
        self.vms = {h: [str(uuid.uuid4()) for _ in range(vms_per_host)] for h in self.hosts}
        self.topo = Topology(prefix, "x")
        self.events = 0  # published to each stream
        self.ops = 0
        self.n_ops = 0

    def heartbeat(self, host: str) -> dict[str, Any]:
        now = time.time()
        return {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": f"vmworker://{host}",
            "type": "vmworker.host.heartbeat",
            "time": iso(now),
            "datacontenttype": "application/json",
            "data": {
                "host": host,
                "worker": {
                    "version": "0.1.0",
                    "pid": 100,
                    "started_at": iso(now - 600),
                    "uptime_s": 600.0,
                },
                "interval_s": HEARTBEAT_S,
                "inventory_digest": "sha256:0f1e2d",
                "vms": {"total": len(self.vms[host]), "by_state": {"running": len(self.vms[host])}},
                "memory": {"total_mib": 262144, "free_mib": 131072},
                "queue_depth": 0,
                "outbox": 0,
                "operations_in_flight": 0,
            },
        }

    def operation(self, host: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(exchange kind, routing key, body) of one operation: its message and events."""
        self.n_ops += 1
        vm = random.choice(self.vms[host])
        op = random.choice(OPS)
        rid = str(uuid.uuid4())
        now = time.time()
        fail = self.n_ops % FAIL_EVERY == 0
        phase = "fail" if fail else "after"
        msg: dict[str, Any] = {"version": 1, "op": op, "vm": {"uuid": vm, "name": f"vm-{vm[:8]}"}}
        base: dict[str, Any] = {
            "specversion": "1.0",
            "source": f"vmworker://{host}",
            "datacontenttype": "application/json",
            "subject": vm,
            "requestid": rid,
        }
        common: dict[str, Any] = {
            "op": op,
            "host": host,
            "vm": {"uuid": vm, "name": f"vm-{vm[:8]}"},
            "request_id": rid,
            "correlation_id": None,
            "redelivered": False,
        }
        hook = {
            "name": "50_vm_channels",
            "kind": "script",
            "point": f"before_{op.removesuffix('_vm')}",
            "rc": 1 if fail else 0,
            "unexpected_rc": False,
            "duration_ms": 3.1,
            "sha256": "ab" * 32,
            "changed_xml": True,
            "stderr_tail": "storage gateway refused: pool locked" if fail else "",
            "stdout_tail": "channel org.qemu.guest_agent.0 added",
            "refused": None,
            "timed_out": False,
            "discarded": None,
        }
        end: dict[str, Any] = {
            **common,
            "phase": phase,
            "recovered": False,
            "attempt": 1,
            "duration_ms": 41.0,
            "state": "running",
            "noop": False,
            "hooks": [hook],
        }
        if fail:
            end["error"] = {
                "code": "hook_failed",
                "source": "hook",
                "message": "50_vm_channels failed (rc=1)",
                "libvirt_code": None,
                "hook": "50_vm_channels",
                "stderr": "storage gateway refused: pool locked",
            }
        out: list[tuple[str, str, dict[str, Any]]] = [
            ("ops", host, msg | {"_rid": rid}),
            (
                "events",
                f"{host}.{op}.before",
                base
                | {
                    "id": str(uuid.uuid4()),
                    "type": f"vmworker.{op}.before",
                    "time": iso(now),
                    "data": common | {"phase": "before", "recovered": False},
                },
            ),
            (
                "events",
                f"{host}.{op}.{phase}",
                base
                | {
                    "id": str(uuid.uuid4()),
                    "type": f"vmworker.{op}.{phase}",
                    "time": iso(now + 0.04),
                    "data": end,
                },
            ),
        ]
        if self.n_ops % 10 == 0:
            out.append(
                (
                    "events",
                    f"{host}.state.resumed",
                    base
                    | {
                        "id": str(uuid.uuid4()),
                        "type": "vmworker.state.resumed",
                        "time": iso(now + 0.05),
                        "data": {
                            "host": host,
                            "vm": common["vm"],
                            "state": "resumed",
                            "reason": "unpaused",
                            "domain_state": "running",
                        },
                    },
                )
            )
        return out


class Publisher:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.conn = Connection(BROKER)
        ch = self.conn.channel()
        self.producers = {
            "events": Producer(ch, exchange=fleet.topo.events),
            "ops": Producer(ch, exchange=fleet.topo.ops),
        }

    def send(self, kind: str, key: str, body: dict[str, Any]) -> None:
        if kind == "ops":
            rid = body.pop("_rid")
            self.producers["ops"].publish(
                json.dumps(body),
                routing_key=key,
                message_id=rid,
                content_type="application/json",
                timestamp=int(time.time()),
            )
            self.fleet.ops += 1
        else:
            self.producers["events"].publish(
                json.dumps(body), routing_key=key, content_type="application/cloudevents+json"
            )
            self.fleet.events += 1

    def heartbeat(self, host: str) -> None:
        self.send("events", f"{host}.host.heartbeat", self.fleet.heartbeat(host))

    def operation(self) -> None:
        for kind, key, body in self.fleet.operation(random.choice(self.fleet.hosts)):
            self.send(kind, key, body)

    def close(self) -> None:
        self.conn.release()


def paced(pub: Publisher, seconds: float, ops_s: float, stop: threading.Event) -> None:
    """Publish for `seconds`: every host's heartbeat once per HEARTBEAT_S, spread evenly, and
    `ops_s` operations per second."""
    hosts = pub.fleet.hosts
    hb_s = len(hosts) / HEARTBEAT_S
    t0 = time.monotonic()
    hb_done = ops_done = 0
    while not stop.is_set():
        el = time.monotonic() - t0
        if el >= seconds:
            break
        while hb_done < int(el * hb_s):
            pub.heartbeat(hosts[hb_done % len(hosts)])
            hb_done += 1
        while ops_done < int(el * ops_s):
            pub.operation()
            ops_done += 1
        time.sleep(0.01)


# -- the ingest, measured -----------------------------------------------------------------------
@contextlib.contextmanager
def store_url(kind: str, tmp: Path) -> Iterator[str]:
    """A fresh, empty store of `kind` (sqlite | postgresql); a PostgreSQL database is dropped
    afterwards."""
    if kind == "sqlite":
        d = Path(tempfile.mkdtemp(dir=tmp, prefix="fleet-"))
        yield st.default_url(d)
        return
    name = unique("benchfleet")
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield str(sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(False))
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def postgres_available() -> str | None:
    """None, or why PostgreSQL cannot be used."""
    try:
        e = sa.create_engine(PG_ADMIN)
        with e.connect() as c:
            c.exec_driver_sql("SELECT 1")
        e.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


def _stored(engine: sa.Engine, fleet: Fleet) -> int:
    """Messages of both streams the store has (the offsets + 1: streams of a fresh prefix
    start at offset 0)."""
    with engine.connect() as c:
        rows = c.execute(sa.select(st.offsets.c.stream, st.offsets.c.stream_offset)).all()
    want = {fleet.topo.events_log.name, fleet.topo.ops_log.name}
    return sum(int(o) + 1 for s, o in rows if s in want)


def ingest_once(tmp: Path, kind: str, p: dict[str, Any]) -> dict[str, Any]:
    prefix = unique("benchfleet")
    fleet = Fleet(prefix, p["hosts"])
    with Connection(BROKER) as conn:
        fleet.topo.declare_shared(conn)
    out: dict[str, Any] = {}
    proc: Process | None = None
    try:
        with store_url(kind, tmp) as url:
            engine = st.open_store(url)
            pub = Publisher(fleet)
            # a backlog: everything a restarted server finds waiting
            while fleet.events + fleet.ops < p["backlog"]:
                pub.operation()
                pub.heartbeat(random.choice(fleet.hosts))
            backlog = fleet.events + fleet.ops
            env = {k: v for k, v in os.environ.items() if not k.startswith("VMWORKER_")}
            env |= {
                "VMWORKER_BROKER": BROKER,
                "VMWORKER_PREFIX": prefix,
                "VMWORKER_LOG_LEVEL": "info",
            }
            proc = Process(
                [
                    sys.executable,
                    "-m",
                    "worker.fleet.ingest",
                    "--url",
                    url,
                    "--poll-interval",
                    "3600",
                ],
                tmp / f"ingest-{prefix}.log",
                env,
                "fleet ingest: following",
            ).start()
            t0, cpu0 = time.monotonic(), cpu_seconds(proc.pid)
            while _stored(engine, fleet) < backlog:
                if time.monotonic() - t0 > 1800:
                    raise RuntimeError("the ingest did not catch up in 30 minutes")
                time.sleep(0.05)
            wall = time.monotonic() - t0
            cpu = cpu_seconds(proc.pid) - cpu0
            out |= {
                "backlog_msgs": backlog,
                "catchup_msgs_s": backlog / wall,
                "catchup_cpu_ms_per_msg": cpu / backlog * 1e3,
                "catchup_max_msgs_s_at_cpu": backlog / cpu if cpu else None,
            }
            # live: the fleet at its rate; the backlog sampled as it goes
            stop = threading.Event()
            before = fleet.events + fleet.ops
            rate = len(fleet.hosts) / HEARTBEAT_S + p["ops_s"] * 3.1
            lags: list[float] = []
            t = threading.Thread(target=paced, args=(pub, p["live_s"], p["ops_s"], stop))
            t0, cpu0 = time.monotonic(), cpu_seconds(proc.pid)
            t.start()
            while t.is_alive():
                behind = fleet.events + fleet.ops - _stored(engine, fleet)
                lags.append(max(0, behind) / rate)
                time.sleep(0.25)
            t.join()
            sent = fleet.events + fleet.ops
            t_end = time.monotonic()
            while _stored(engine, fleet) < sent:
                if time.monotonic() - t_end > 600:
                    raise RuntimeError("the ingest did not catch up after the live load")
                time.sleep(0.02)
            drain = time.monotonic() - t_end
            wall = time.monotonic() - t0
            cpu = cpu_seconds(proc.pid) - cpu0
            live = sent - before
            mem = rss_kib(proc.pid)
            out |= {
                "live_hosts": len(fleet.hosts),
                "live_ops_s": p["ops_s"],
                "live_msgs_s_offered": live / (t_end - t0),
                "live_lag_p50_s": summary(lags)["median"] if lags else 0.0,
                "live_lag_max_s": max(lags) if lags else 0.0,
                "live_drain_after_s": drain,
                "live_cpu_cores": cpu / wall,
                "live_cpu_ms_per_msg": cpu / live * 1e3,
                "rss_mib": mem.get("VmRSS", 0) / 1024,
                "rss_peak_mib": mem.get("VmHWM", 0) / 1024,
            }
            pub.close()
            proc.stop()
            proc = None
            engine.dispose()
    finally:
        if proc is not None:
            proc.stop()
        delete_topology(prefix, [])
    return out


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
            m = minutes.setdefault((host, int((at + 0.04) // 60)), [0, 0])
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


def big_once(tmp: Path, kind: str, p: dict[str, Any]) -> dict[str, Any]:
    with store_url(kind, tmp) as url:
        samples = build_big_store(
            url,
            hosts=p["big_hosts"],
            vms=p["big_vms"],
            events=p["big_events"],
            progress=p["big_events"] > 100_000,
        )
        # the queries in a process of their own: its memory is a server's with this store
        out = subprocess.run(
            [sys.executable, "-m", "bench.fleet", "--query", url],
            input=json.dumps(samples),
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
            timeout=1800,
        )
        res = json.loads(out.stdout)
        res["load_s"] = samples["load_s"]
        res["events"] = p["big_events"]
        if kind == "sqlite":
            path = sa.engine.make_url(url).database or ""
            res["db_mib"] = (
                sum(f.stat().st_size for f in Path(path).parent.glob("fleet.db*")) / 2**20
            )
        return res


def section(
    tmp: Path, smoke: bool, res: dict[str, Any], kinds: tuple[str, ...] = ("sqlite", "postgresql")
) -> None:
    """The `fleet` part of bench.run: ingest and big-store queries, per backend."""
    p = params(smoke)
    res["params"]["fleet"] = p
    why = postgres_available()
    out: dict[str, Any] = {}
    for kind in kinds:
        if kind == "postgresql" and why:
            if not smoke:
                raise SystemExit(f"the full benchmark needs PostgreSQL: {why}")
            say(f"SKIPPING fleet on PostgreSQL: {why}")
            out[kind] = {"skipped": why}
            continue
        say(f"fleet ingest on {kind}: {p['hosts']} hosts, {p['ops_s']} ops/s")
        ing = ingest_once(tmp, kind, p)
        say(f"fleet big store on {kind}: {p['big_events']:,} events")
        big = big_once(tmp, kind, p)
        out[kind] = {
            "ingest": {k: summary([v]) for k, v in ing.items() if v is not None},
            "big": {k: v if isinstance(v, dict) else summary([v]) for k, v in big.items()},
        }
    res["sections"]["fleet"] = out


def markdown_lines(res: dict[str, Any], hdr: list[str], row: Any) -> list[str]:
    f = res["sections"].get("fleet")
    if not f:
        return []
    p = res["params"].get("fleet", {})
    lines = [
        "",
        f"### Fleet store ({p.get('hosts', '?'):,} hosts at a {HEARTBEAT_S:g} s heartbeat"
        f" + {p.get('ops_s', '?')} ops/s; big store {p.get('big_hosts', 0):,} hosts,"
        f" {p.get('big_vms', 0):,} VMs, {p.get('big_events', 0):,} events)",
        *hdr,
    ]
    if "error" in f:
        return [*lines, f"| fleet | error: {f['error']} | | | |"]
    labels = [
        ("ingest", "catchup_msgs_s", "catch-up from a backlog", "msgs/s"),
        ("ingest", "catchup_cpu_ms_per_msg", "catch-up: ingest CPU per message", "ms"),
        ("ingest", "catchup_max_msgs_s_at_cpu", "messages/s one core allows at that CPU", "msgs/s"),
        ("ingest", "live_msgs_s_offered", "live: messages/s offered", "msgs/s"),
        ("ingest", "live_lag_p50_s", "live: lag (median of samples)", "s"),
        ("ingest", "live_lag_max_s", "live: lag (worst sample)", "s"),
        ("ingest", "live_drain_after_s", "live: caught up after the load stopped", "s"),
        ("ingest", "live_cpu_cores", "live: ingest CPU", "cores"),
        ("ingest", "live_cpu_ms_per_msg", "live: ingest CPU per message", "ms"),
        ("ingest", "rss_mib", "ingest RSS", "MiB"),
        ("big", "load_s", "bulk load of the big store", "s"),
        ("big", "db_mib", "big store on disk", "MiB"),
        ("big", "request_history_ms", "a request's history (get_request)", "ms"),
        ("big", "vm_history_ms", "a VM's history (get_vm, 200 events)", "ms"),
        ("big", "fleet_summary_ms", "fleet summary", "ms"),
        ("big", "hosts_page_ms", "hosts, first page", "ms"),
        ("big", "host_page_ms", "one host (get_host)", "ms"),
        ("big", "vms_page_ms", "VMs, first page", "ms"),
        ("big", "requests_page_ms", "requests, first page", "ms"),
        ("big", "requests_host_page_ms", "requests of a host, first page", "ms"),
        ("big", "failures_page_ms", "failures of the last hour, first page", "ms"),
        ("big", "events_page_ms", "events, first page", "ms"),
        ("big", "text_search_ms", "text search in errors and hook output (a scan)", "ms"),
        ("big", "query_rss_mib", "memory of the querying process", "MiB"),
    ]
    for kind in ("sqlite", "postgresql"):
        sec = f.get(kind, {})
        if "skipped" in sec:
            lines.append(f"| {kind} | skipped: {sec['skipped']} | | | |")
            continue
        for part, key, label, unit in labels:
            if key in sec.get(part, {}):
                lines.append(row(f"{kind}: {label}", sec[part][key], unit))
    return lines


_GOALS = [  # (what, part, figure, limit, unit): the targets
    ("fleet ingest: worst lag at 5,000 hosts + 200 ops/s", "ingest", "live_lag_max_s", 5.0, "s"),
    ("a request's history, big store", "big", "request_history_ms", 50.0, "ms"),
    ("fleet summary query, big store", "big", "fleet_summary_ms", 300.0, "ms"),
]
TARGETS = [
    (f"{what} ({label})", ("fleet", kind, part, key), "<=", limit, unit)
    for what, part, key, limit, unit in _GOALS
    for kind, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL"))
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    ap.add_argument("--smoke", action="store_true", help="small counts: seconds, not minutes")
    ap.add_argument("--only", choices=["sqlite", "postgresql"], help="one backend")
    ap.add_argument("--query", metavar="URL", help=argparse.SUPPRESS)  # the query process
    ap.add_argument(
        "--build", metavar="URL", help="only build the big store at URL (for timing pages)"
    )
    args = ap.parse_args(argv)
    if args.query:
        print(json.dumps(query_times(args.query, json.loads(sys.stdin.read()))))
        return 0
    p = params(args.smoke)
    if args.build:
        s = build_big_store(
            args.build,
            hosts=p["big_hosts"],
            vms=p["big_vms"],
            events=p["big_events"],
            progress=True,
        )
        print(json.dumps(s))
        return 0
    res: dict[str, Any] = {"params": {}, "sections": {}, "smoke": args.smoke}
    with tempfile.TemporaryDirectory(prefix="vmworker-fleet-") as tmp:
        section(Path(tmp), args.smoke, res, (args.only,) if args.only else ("sqlite", "postgresql"))
    print(json.dumps(res["sections"]["fleet"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
