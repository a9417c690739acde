"""Live migration between two real libvirt hosts on this machine (two private libvirtds,
tests/hosts.py), with real QEMU: `migrate_vm` through the workers against libvirt called
directly (`virDomainMigrate3` with the flags and parameters the worker uses by default: live,
persist on the destination, undefine the source, the domain's migratable XML, the migration
stream to tcp://127.0.0.1).

One VM goes back and forth; each round does worker a→b, worker b→a, direct a→b, direct b→a,
the order of the two pairs swapped every round so that drift hits both alike. Times: publish →
`after` event for the worker, the `migrate3` call for libvirt. Downtime is libvirt's own figure
(`downtime` of the completed job's stats, read on the destination). Then `vmworker drain` of
`drain_vms` VMs with each `--parallel`, timed as an operator sees it (the command's wall time),
the VMs put back on the source (untimed) between drains.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    BROKER,
    REPO,
    EventTap,
    OpPublisher,
    delete_topology,
    hooks_root,
    remove_domain,
    say,
    skipping,
    summary,
    unique,
    worker_process,
)
from worker.topology import Topology

MIGRATION_URI = "tcp://127.0.0.1"


def available() -> str | None:
    try:
        import libvirt

        libvirt.open("qemu:///system").close()
    except Exception as exc:
        return f"no libvirtd on qemu:///system ({exc}); scripts/bootstrap libvirtd starts one"
    if shutil.which("unshare") is None or shutil.which("libvirtd") is None:
        return "a second libvirtd needs unshare and libvirtd"
    return None


def _flags() -> int:
    import libvirt

    return (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | (libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    )


def direct_migrate(src: Any, dst: Any, uuid: str) -> float:
    """libvirt alone, as the worker calls it: seconds the migrate3 call took."""
    import libvirt

    dom = src.lookupByUUIDString(uuid)
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
    params = {
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: xml,
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: xml,
        libvirt.VIR_MIGRATE_PARAM_URI: MIGRATION_URI,
    }
    t0 = time.monotonic()
    dom.migrate3(dst, params, _flags())
    return time.monotonic() - t0


def downtime_ms(conn: Any, uuid: str) -> float | None:
    """The downtime libvirt measured for the last migration of `uuid` into `conn`'s host."""
    import libvirt

    try:
        stats = conn.lookupByUUIDString(uuid).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        return None
    value = stats.get("downtime")
    return float(value) if value is not None else None


def _start_direct(conn: Any, tag: str) -> str:
    """A running diskless VM defined on `conn` (untimed)."""
    from handlers.domxml import build_domain_xml
    from handlers.spec import VmSpec
    from tests.support import small_vm

    spec = small_vm(tag)
    spec["name"] = unique(f"vmw-bench-{tag}-")
    dom = conn.defineXML(build_domain_xml(VmSpec.model_validate(spec)))
    dom.create()
    return str(spec["uuid"])


def _remove_all(conns: list[Any], uuids: list[str]) -> None:
    for conn in conns:
        for u in uuids:
            remove_domain(conn, u)


class Hosts:
    """Two private libvirtds, a worker on each with the other as its peer, one event tap."""

    def __init__(self, tmp: Path) -> None:
        self.daemons: list[Any] = []
        self._stack = contextlib.ExitStack()  # the daemons, stopped and removed last
        self.prefix = unique("bench")
        self.a, self.b = unique("ha"), unique("hb")
        self.tmp = tmp
        self.workers: list[Any] = []
        self.conns: list[Any] = []
        self.made: list[str] = []
        self.tap: EventTap | None = None
        self.pub: dict[str, OpPublisher] = {}

    def __enter__(self) -> Hosts:
        import libvirt

        from tests.hosts import private_libvirtds

        try:
            # port blocks 2 and 3: the drain tests use 0 and 1
            self.daemons = self._stack.enter_context(private_libvirtds("bench", 2, 3))
            uri = {self.a: self.daemons[0].uri, self.b: self.daemons[1].uri}
            self.conns = [libvirt.open(uri[self.a]), libvirt.open(uri[self.b])]
            topo = Topology(self.prefix, self.a)
            from bench.common import broker_conn

            with broker_conn() as conn:
                topo.declare(conn)
            self.tap = EventTap(topo.events).start()
            for h in (self.a, self.b):
                peer = self.b if h == self.a else self.a
                peers = {peer: {"libvirt_uri": uri[peer], "migration_uri": MIGRATION_URI}}
                run = self.tmp / h
                run.mkdir()
                w = worker_process(
                    run / "worker.log", host=h, prefix=self.prefix, state_dir=run / "state",
                    hooks_root=hooks_root(run), libvirt_uri=uri[h], peers=json.dumps(peers),
                    heartbeat_interval=1.0,
                )  # fmt: skip
                self.workers.append(w)
            for w in self.workers:
                w.spawn()
            for w in self.workers:
                w.wait_ready()
            self.pub = {h: OpPublisher(topo.ops, h) for h in (self.a, self.b)}
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: Any) -> None:
        for p in self.pub.values():
            p.close()
        for w in self.workers:
            w.stop()
        if self.tap is not None:
            self.tap.stop()
        _remove_all(self.conns, self.made)
        for c in self.conns:
            with contextlib.suppress(Exception):
                c.close()
        self._stack.close()
        delete_topology(self.prefix, [self.a, self.b])

    def conn(self, host: str) -> Any:
        return self.conns[0 if host == self.a else 1]

    def worker_migrate(self, uuid: str, src: str, dst: str) -> float:
        assert self.tap is not None
        body = {"version": 1, "op": "migrate_vm", "vm": {"uuid": uuid}}
        body["params"] = {"destination": dst}
        t0 = time.monotonic()
        s = self.tap.wait_terminal(self.pub[src].publish(json.dumps(body).encode()), 300)
        if s.phase != "after":
            raise RuntimeError(f"migrate_vm {src} -> {dst} failed: {s.error}")
        return s.at - t0

    def wait_beat(self, host: str, after: float, timeout: float = 30.0) -> None:
        """Until `host` sent a heartbeat taken after `after` (monotonic): what runs there is
        known then (an inventory that changed is sent just before its heartbeat)."""
        assert self.tap is not None
        end = time.monotonic() + timeout
        key = f"{host}.host.heartbeat"
        while not any(s.routing_key == key and s.at > after + 0.1 for s in list(self.tap.seen)):
            if time.monotonic() > end:
                gone = [w.argv[-1] for w in self.workers if w.proc.poll() is not None]
                raise RuntimeError(
                    f"no heartbeat of {host} in {timeout:g}s (workers exited: {len(gone)})"
                )
            time.sleep(0.05)


def _pairs(h: Hosts, uuid: str, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"worker": [], "direct": [], "worker_down": [], "direct_down": []}
    ca, cb = h.conn(h.a), h.conn(h.b)
    for r in range(rounds):
        order = ("worker", "direct") if r % 2 == 0 else ("direct", "worker")
        for how in order:
            for src, dst, cd in ((h.a, h.b, cb), (h.b, h.a, ca)):
                if how == "worker":
                    t = h.worker_migrate(uuid, src, dst)
                else:
                    t = direct_migrate(h.conn(src), cd, uuid)
                out[how].append(t)
                down = downtime_ms(cd, uuid)
                if down is not None:
                    out[f"{how}_down"].append(down)
    return out


def _drain(h: Hosts, n: int, parallel: int) -> dict[str, Any]:
    uuids = [_start_direct(h.conn(h.a), f"drain{i}") for i in range(n)]
    h.made += uuids
    h.wait_beat(h.a, time.monotonic())
    cmd = [sys.executable, "-m", "worker", "drain", h.a, "--to", h.b, "--wait", "--json"]
    cmd += ["--parallel", str(parallel), "--broker", BROKER, "--prefix", h.prefix]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"drain --parallel {parallel} failed: {proc.stdout} {proc.stderr}")
    moves = json.loads(proc.stdout)["moves"]
    if sorted(m["vm"] for m in moves) != sorted(uuids) or any(m["outcome"] != "ok" for m in moves):
        raise RuntimeError(f"drain --parallel {parallel} did not move every VM: {moves}")
    _remove_all(h.conns, uuids)  # untimed: the next drain starts from a full source again
    durations = [m["duration_s"] for m in moves]
    return {
        "wall_s": wall,
        "per_vm_median_s": statistics.median(durations),
        "vms_per_min": 60.0 * n / wall,
    }


def run_once(tmp: Path, rounds: int, drain_vms: int, parallels: tuple[int, ...]) -> dict[str, Any]:
    base = Path(tmp) / unique("mig")
    base.mkdir(parents=True)
    with Hosts(base) as h:
        uuid = _start_direct(h.conn(h.a), "mig")
        h.made.append(uuid)
        got = _pairs(h, uuid, rounds)
        _remove_all(h.conns, [uuid])
        w, d = statistics.median(got["worker"]), statistics.median(got["direct"])
        res: dict[str, Any] = {
            "worker_ms": w * 1e3,
            "direct_ms": d * 1e3,
            "ratio": w / d,
            "migrations": len(got["worker"]) + len(got["direct"]),
        }
        if got["worker_down"] and got["direct_down"]:
            res["worker_downtime_ms"] = statistics.median(got["worker_down"])
            res["direct_downtime_ms"] = statistics.median(got["direct_down"])
        down = f", downtime {res.get('worker_downtime_ms')} / {res.get('direct_downtime_ms')} ms"
        say(f"migration: worker {w * 1e3:.0f} ms, direct {d * 1e3:.0f} ms, ratio {w / d:.3f}{down}")
        for p in parallels:
            dr = _drain(h, drain_vms, p)
            say(f"drain of {drain_vms} VMs, --parallel {p}: {dr['wall_s']:.1f} s")
            for k, v in dr.items():
                res[f"drain_p{p}_{k}"] = v
    return res


# -- the part of `python -m bench.run` --------------------------------------------------------
DRAIN_PARALLEL = (1, 2, 4)  # the --parallel values a drain is measured with (smoke: 2 only)


def section(tmp: Path, p: dict[str, int], res: dict[str, Any]) -> None:
    why = available()
    if skipping(res["smoke"], why, "two libvirt hosts", "migration"):
        res["sections"]["migration"] = {"skipped": why}
        return
    parallels = (2,) if res["smoke"] else DRAIN_PARALLEL
    runs = []
    for i in range(p["runs"]):
        say(f"migration run {i + 1}/{p['runs']}")
        runs.append(run_once(tmp, p["mig_rounds"], p["drain_vms"], parallels))
    res["sections"]["migration"] = {k: summary(r[k] for r in runs) for k in runs[0]}


def markdown_lines(
    res: dict[str, Any], hdr: list[str], row: Callable[[str, Any, str], str]
) -> list[str]:
    m = res["sections"].get("migration", {})
    lines = ["", "### Live migration (two libvirtds on this machine, real QEMU, 64 MiB VM)", *hdr]
    if "skipped" in m:
        return [*lines, f"| live migration | skipped: {m['skipped']} | | | |"]
    if "ratio" not in m:
        return []
    lines.append(row("through the workers: publish → after", m["worker_ms"], "ms"))
    lines.append(row("libvirt direct: migrate3, same flags", m["direct_ms"], "ms"))
    lines.append(row("worker ÷ direct", m["ratio"], "x"))
    if "worker_downtime_ms" in m:
        lines.append(row("downtime (libvirt), through the workers", m["worker_downtime_ms"], "ms"))
        lines.append(row("downtime (libvirt), direct", m["direct_downtime_ms"], "ms"))
    n = res["params"]["drain_vms"]
    for p in DRAIN_PARALLEL:
        if f"drain_p{p}_wall_s" in m:
            lines.append(
                row(f"vmworker drain of {n} VMs, --parallel {p}", m[f"drain_p{p}_wall_s"], "s")
            )
            lines.append(row("… each VM: publish → after", m[f"drain_p{p}_per_vm_median_s"], "s"))
    return lines
