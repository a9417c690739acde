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

The generator is in bench/fleet_gen.py, the big store and its query timings in
bench/fleet_big.py; this module runs the measurements and reports them.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from kombu import Connection

from bench.common import (
    BROKER,
    REPO,
    Process,
    delete_topology,
    say,
    skipping,
    summary,
    unique,
)
from bench.fleet_big import build_big_store, query_times
from bench.fleet_gen import HEARTBEAT_S, Fleet, Publisher, paced
from bench.meter import cpu_seconds, rss_kib
from worker.fleet import store as st

PG_ADMIN = os.environ.get(
    "VMWORKER_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


# hosts, ops/s, seconds of live load, backlog, and the big store's hosts, VMs, events
_FULL = (5000, 200, 60.0, 100_000, 1000, 50_000, 5_000_000)
_SMOKE = (60, 10, 2.0, 1000, 20, 400, 10_000)
_KEYS = ("hosts", "ops_s", "live_s", "backlog", "big_hosts", "big_vms", "big_events")


def params(smoke: bool) -> dict[str, Any]:
    return dict(zip(_KEYS, _SMOKE if smoke else _FULL, strict=True))


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
                "fleet.ingest_following",
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
    tmp: Path,
    smoke: bool,
    res: dict[str, Any],
    kinds: tuple[str, ...] = ("sqlite", "postgresql"),
    changes: dict[str, Any] | None = None,
) -> None:
    """The `fleet` part of bench.run: ingest and big-store queries, per backend."""
    p = params(smoke) | (changes or {})
    res["params"]["fleet"] = p
    why = postgres_available()
    out: dict[str, Any] = {}
    for kind in kinds:
        if kind == "postgresql" and skipping(smoke, why, "PostgreSQL", "fleet on PostgreSQL"):
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
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"change a parameter (repeatable): {', '.join(_KEYS)}",
    )
    ap.add_argument("--query", metavar="URL", help=argparse.SUPPRESS)  # the query process
    ap.add_argument(
        "--build", metavar="URL", help="only build the big store at URL (for timing pages)"
    )
    args = ap.parse_args(argv)
    if args.query:
        print(json.dumps(query_times(args.query, json.loads(sys.stdin.read()))))
        return 0
    p = params(args.smoke)
    changes = {k: type(p[k])(float(v)) for k, _, v in (c.partition("=") for c in args.set)}
    p |= changes
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
        kinds = (args.only,) if args.only else ("sqlite", "postgresql")
        section(Path(tmp), args.smoke, res, kinds, changes)
    print(json.dumps(res["sections"]["fleet"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
