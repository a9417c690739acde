"""`vmworker monitor`: a live picture of hosts and VMs, built from events alone.

`FleetView.apply(event)` folds one event into the picture (a pure class: no broker, no clock of
its own: questions about time take `now`); `render(view, now)` turns it into a rich renderable,
every cell cut to a bounded length. The command replays the `<prefix>.events.log` stream from its
start, so the picture is complete, then follows a live queue on `<prefix>.events` (declared
before the replay, so nothing falls in between; events seen twice are applied once). The queue
depth of a host that is down or offline is read from the broker, not from its last heartbeat.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from worker.bounds import cell, cut
from worker.cliopts import connect_or_exit, connection_options, settings_or_exit

LATE_FACTOR = 2.5  # a host is late when its last heartbeat is older than this many intervals
DOWN_MISSED = 3  # a host is down once this many heartbeats in a row did not come
DOWN_FACTOR = DOWN_MISSED + 0.5  # ... each given half an interval of slack, as LATE_FACTOR is
TEXT_CELL_MAX = 400  # characters of a stderr cell
TEXT_CELL_LINES = 6  # lines of a stderr cell
LIVE_FAILURES = 5  # failures a live view shows (each up to TEXT_CELL_LINES tall); --once: 10
_STATE_OF_EVENT = {  # state event word -> domain state, when the event carries none
    "defined": "shutoff",
    "undefined": "undefined",
    "started": "running",
    "resumed": "running",
    "paused": "paused",
    "stopped": "shutoff",
    "shutdown": "shutdown",
    "crashed": "crashed",
    "pmsuspended": "pmsuspended",
}
_REFUSED = ("validation", "expired", "unauthorized")  # error sources of a message never run
_STATE_STYLE = {
    "running": "green",
    "paused": "yellow",
    "shutoff": "dim",
    "crashed": "bold red",
    "undefined": "dim strike",
    "unknown": "magenta",
}


def parse_time(value: str | None) -> float | None:
    """An event's ISO 8601 `time` as epoch seconds."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@dataclass
class HostRow:
    host: str
    status: str = "unknown"  # online | offline
    last_seen: float | None = None  # time of its last heartbeat/online/offline event
    interval: float | None = None
    version: str | None = None
    libvirt: str | None = None
    hypervisor: str | None = None
    domains: int | None = None
    queue_depth: int | None = None
    outbox: int | None = None
    hooks: int | None = None
    started_at: str | None = None
    by_state: dict[str, int] | None = None  # domains per state, from the heartbeat
    free_mib: int | None = None
    digest: str | None = None  # inventory_digest of its newest heartbeat
    inventory_digest: str | None = None  # ... of the newest inventory seen
    inventory_at: float | None = None

    @property
    def stale(self) -> bool:
        """Its heartbeat names another inventory than the newest one seen (one may have been
        lost, or this reader started between an inventory and its heartbeat)."""
        return self.digest is not None and self.digest != self.inventory_digest


@dataclass
class VmRow:
    uuid: str
    name: str | None = None
    host: str | None = None
    state: str = "unknown"
    state_at: float = 0.0  # time of the newest news about its state
    changed_at: float = 0.0  # when its state last changed
    last_change: str | None = None  # the last state event: "stopped (destroyed)"
    last_op: str | None = None
    result: str | None = None  # running | ok | failed | duplicate
    request_id: str | None = None
    op_at: float = 0.0
    error: str | None = None
    known: bool = False  # an inventory, a state event or a success said it exists

    @property
    def at(self) -> float:
        """Time of the newest news about it."""
        return max(self.op_at, self.changed_at)

    def observe(self, state: str, at: float) -> None:
        """News about the state at time `at`; older news than what we know is ignored."""
        if at < self.state_at:
            return
        if state != self.state:
            self.changed_at = at
        self.state, self.state_at = state, at


@dataclass
class Failure:
    at: float
    host: str | None
    vm: str | None
    vm_name: str | None
    op: str | None
    request_id: str | None
    error: str
    hook: str | None = None
    stderr: str | None = None


@dataclass
class FleetView:
    """The state of a fleet as its events tell it. Feed events with `apply`, in order."""

    max_failures: int = 20
    hosts: dict[str, HostRow] = field(default_factory=dict)
    vms: dict[str, VmRow] = field(default_factory=dict)
    failures: deque[Failure] = field(default_factory=deque)
    applied: int = 0
    _seen: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def apply(self, ev: dict[str, Any]) -> bool:
        """Fold one CloudEvent in; False when it was already applied (same id) or not ours."""
        eid = ev.get("id")
        if eid is not None:
            if eid in self._seen:
                return False
            self._seen[eid] = None
            if len(self._seen) > 200_000:
                self._seen.popitem(last=False)
        words = str(ev.get("type", "")).split(".")
        data = ev.get("data") or {}
        if len(words) < 3 or words[0] != "vmworker" or not isinstance(data, dict):
            return False
        at = parse_time(ev.get("time")) or 0.0
        host = data.get("host") or _host_of(ev)
        if words[1] == "host":
            self._host_event(words[2], host, data, at)
        elif words[1] == "state":
            self._state_event(words[2], host, ev, data, at)
        elif data.get("phase") in ("before", "after", "fail"):
            self._op_event(host, ev, data, at)
        else:
            return False
        self.applied += 1
        return True

    # -- the three kinds of event ---------------------------------------------------------
    def _host_event(self, kind: str, host: str | None, data: dict[str, Any], at: float) -> None:
        if not host:
            return
        row = self.hosts.setdefault(host, HostRow(host))
        if kind == "inventory":
            self._inventory(row, data, at)
            return
        if row.last_seen is not None and at < row.last_seen:
            return  # an older beat, seen late
        row.last_seen = at
        worker = data.get("worker") or {}
        row.version = worker.get("version", row.version)
        row.started_at = worker.get("started_at", row.started_at)
        if kind == "offline":
            row.status = "offline"
            return
        row.status = "online"
        row.interval = data.get("interval_s", row.interval)
        row.queue_depth = data.get("queue_depth")
        row.outbox = data.get("outbox")
        memory = data.get("memory") or (data.get("libvirt") or {}).get("memory") or {}
        row.free_mib = memory.get("free_mib", row.free_mib)
        vms = data.get("vms")
        if isinstance(vms, dict):
            row.domains = vms.get("total", row.domains)
            row.by_state = vms.get("by_state") or {}
        if "inventory_digest" in data:
            row.digest = data["inventory_digest"]
        elif "domains" in data:  # a worker from before host.inventory: its beat is one
            self._inventory(row, data, at)

    def _inventory(self, row: HostRow, data: dict[str, Any], at: float) -> None:
        """What runs on the host and what is installed (`host.inventory`, or the heartbeat of
        a worker from before it)."""
        if row.inventory_at is not None and at < row.inventory_at:
            return
        row.inventory_at = at
        row.inventory_digest = data.get("inventory_digest")
        lv = data.get("libvirt") or {}
        row.libvirt = lv.get("version", row.libvirt)
        if lv.get("hypervisor"):
            row.hypervisor = f"{lv['hypervisor']} {lv.get('hypervisor_version', '')}".strip()
        hooks = data.get("hooks")
        if isinstance(hooks, dict):
            row.hooks = sum(len(v) for v in hooks.values())
        domains = data.get("domains")
        if not isinstance(domains, list):
            return
        if row.by_state is None:  # no heartbeat counted them
            row.domains = len(domains)
        listed = set()
        for d in domains:
            if not isinstance(d, dict):
                continue
            vm = self._vm(d.get("uuid"), d.get("name"), row.host)
            vm.known = True
            listed.add(vm.uuid)
            vm.observe(d.get("state") or "unknown", at)
        if "data.domains" in (data.get("cut") or []):
            return  # the list was cut to fit the event: a VM not in it may still be there
        for vm in self.vms.values():  # known here, not listed any more: gone from this host
            if vm.host == row.host and vm.uuid not in listed:
                vm.observe("undefined", at)

    def _state_event(
        self, word: str, host: str | None, ev: dict[str, Any], data: dict[str, Any], at: float
    ) -> None:
        vm_data = data.get("vm") or {}
        vm = self._vm(vm_data.get("uuid") or ev.get("subject"), vm_data.get("name"), host)
        vm.known = True
        if at >= vm.state_at:
            vm.last_change = f"{word} ({data.get('reason', '?')})"
        vm.observe(data.get("domain_state") or _STATE_OF_EVENT.get(word, "unknown"), at)

    def _op_event(
        self, host: str | None, ev: dict[str, Any], data: dict[str, Any], at: float
    ) -> None:
        phase = data["phase"]
        vm_data = data.get("vm") or {}
        uuid = vm_data.get("uuid") or ev.get("subject")
        error = data.get("error") or {}
        if phase == "fail":
            self._fail(host, uuid, vm_data.get("name"), data, error, at)
        if not uuid:
            return  # a message too broken to name its VM: only in the failures
        if phase == "fail" and uuid not in self.vms and _not_a_vm(error):
            return  # a refused message, or no such domain: only in the failures
        vm = self._vm(uuid, vm_data.get("name"), host)
        if phase == "fail" and not vm.known and _not_a_vm(error):
            del self.vms[vm.uuid]  # its `before` made the row: there is no such VM
            return
        if phase == "after":
            vm.known = True
        if data.get("duplicate"):
            vm.result, vm.request_id = "duplicate", data.get("request_id")
            return  # a re-sent old outcome: says nothing new about the VM's state
        if at < vm.op_at:
            return
        vm.last_op, vm.request_id, vm.op_at = data.get("op"), data.get("request_id"), at
        if phase == "before":
            vm.result, vm.error = "running", None
            return
        vm.result = "ok" if phase == "after" else "failed"
        vm.error = _error_text(error) if phase == "fail" else None
        state = data.get("state")
        if state and state != "unknown":
            vm.observe(state, at)

    def _fail(
        self,
        host: str | None,
        uuid: str | None,
        name: str | None,
        data: dict[str, Any],
        error: dict[str, Any],
        at: float,
    ) -> None:
        if data.get("duplicate"):
            return
        stderr = error.get("stderr")
        hook = error.get("hook")
        if not stderr:  # a failing after-hook or fail-hook: its own tail
            bad = [h for h in data.get("hooks") or [] if h.get("rc") not in (0, None)]
            if bad:
                hook = hook or bad[0].get("name")
                stderr = "\n".join(h.get("stderr_tail") or "" for h in bad).strip() or None
        self.failures.append(
            Failure(
                at,
                host,
                uuid,
                name,
                data.get("op"),
                data.get("request_id"),
                _error_text(error),
                hook,
                stderr,
            )
        )
        while len(self.failures) > self.max_failures:
            self.failures.popleft()

    def _vm(self, uuid: str | None, name: str | None, host: str | None) -> VmRow:
        key = uuid or "?"
        vm = self.vms.get(key)
        if vm is None:
            vm = self.vms[key] = VmRow(key)
        if name:
            vm.name = name
        if host:
            vm.host = host
        return vm

    # -- questions a renderer asks ------------------------------------------------------------
    def silent_for(self, host: HostRow, now: float) -> float | None:
        """Seconds since an online host's last heartbeat if it is late or down, else None."""
        if host.status != "online" or host.last_seen is None or not host.interval:
            return None
        age = now - host.last_seen
        return age if age > LATE_FACTOR * host.interval else None

    def late(self, host: HostRow, now: float) -> float | None:
        """Seconds since the last heartbeat if the host is late (but not yet down), else None."""
        age = self.silent_for(host, now)
        return None if age is None or self.down(host, now) else age

    def down(self, host: HostRow, now: float) -> bool:
        """True once an online host has missed DOWN_MISSED heartbeats (it died, said nothing)."""
        age = self.silent_for(host, now)
        return age is not None and age > DOWN_FACTOR * (host.interval or 0.0)

    def status(self, host: HostRow, now: float) -> str:
        """online | late | down | offline | unknown."""
        if self.down(host, now):
            return "down"
        return "late" if self.late(host, now) is not None else host.status

    def late_hosts(self, now: float) -> list[str]:
        return [h.host for h in self.hosts.values() if self.late(h, now) is not None]

    def down_hosts(self, now: float) -> list[str]:
        return [h.host for h in self.hosts.values() if self.down(h, now)]

    def stale_depth_hosts(self, now: float) -> list[str]:
        """Hosts whose last heartbeat's queue depth is stale: down or offline (their queue
        fills while nobody consumes it); a monitor asks the broker instead."""
        return [h.host for h in self.hosts.values() if self.status(h, now) in ("down", "offline")]

    def vm_state(self, vm: VmRow, now: float) -> str:
        """The VM's state as last told, or `unknown` when its host is down: nobody knows."""
        host = self.hosts.get(vm.host or "")
        return "unknown" if host is not None and self.down(host, now) else vm.state

    def shown_hosts(
        self, now: float, only: Collection[str] = (), offline_after: float | None = None
    ) -> set[str]:
        """The hosts a view shows: those of `only` (all when empty), less those that said
        goodbye more than `offline_after` seconds ago."""
        out: set[str] = set()
        for h in self.hosts.values():
            if only and h.host not in only:
                continue
            gone = h.status == "offline" and h.last_seen is not None
            if gone and offline_after is not None and now - (h.last_seen or 0) > offline_after:
                continue
            out.add(h.host)
        if only:  # a host known only from VMs' or failures' events
            out |= {v.host for v in self.vms.values() if v.host and v.host in only}
        return out

    def host_rank(self, host: HostRow, now: float) -> int:
        """0 needs attention most: down, late, stale inventory, a backlog, online, offline."""
        state = self.status(host, now)
        if state in ("down", "late"):
            return 0 if state == "down" else 1
        if host.stale:
            return 2
        if (host.queue_depth or 0) > 0 or (host.outbox or 0) > 0:
            return 3
        return {"online": 4, "unknown": 5}.get(state, 6)

    def vm_rank(self, vm: VmRow, now: float) -> int:
        """0 needs attention most: failed, unknown (its host is down), crashed, busy, paused."""
        if vm.result == "failed":
            return 0
        state = self.vm_state(vm, now)
        if state in ("unknown", "crashed"):
            return 1 if state == "unknown" else 2
        if vm.result == "running":
            return 3
        return 4 if state == "paused" else 5


def _not_a_vm(error: dict[str, Any]) -> bool:
    """A failure that says the message named no VM there is (refused before it ran, or no
    such domain): not a reason to list a VM."""
    return error.get("source") in _REFUSED or error.get("code") == "no_domain"


def _host_of(ev: dict[str, Any]) -> str | None:
    src = str(ev.get("source", ""))
    return src.split("//", 1)[1] if src.startswith("vmworker://") else None


def _error_text(error: dict[str, Any]) -> str:
    if not error:
        return "?"
    return f"{error.get('source', '?')}/{error.get('code', '?')}: {error.get('message', '')}"


def text_cell(value: object, limit: int = TEXT_CELL_MAX, lines: int = TEXT_CELL_LINES) -> str:
    """A multi-line cell (stderr): at most `lines` lines of at most `limit` characters in all."""
    rows = str(value).splitlines()
    if len(rows) > lines:
        rows = [*rows[: lines - 1], f"[{len(rows) - lines + 1} more lines]"]
    return cut("\n".join(cut(r, limit) for r in rows), limit)


def _age(now: float, at: float | None) -> str:
    if at is None:
        return "-"
    s = max(0.0, now - at)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S") if at else "-"


def render(
    view: FleetView,
    now: float | None = None,
    *,
    title: str = "vmworker fleet",
    max_vms: int = 200,
    max_failures: int = 10,
    depths: Mapping[str, int | None] | None = None,
    hosts: Collection[str] = (),
    offline_after: float | None = None,
) -> RenderableType:
    """The picture as a rich renderable: recent failures first, then hosts and VMs, each sorted
    by what needs attention (down, late, failed first), then by the newest news. `depths`: the
    queue depth of each down or offline host as the broker tells it (`stale_depth_hosts`);
    `hosts`: only these (all when empty); `offline_after`: hosts that said goodbye longer ago
    are left out. Only `view` is read: a view loaded otherwise renders the same."""
    now = time.time() if now is None else now
    shown = view.shown_hosts(now, hosts, offline_after)
    host_rows = [view.hosts[h] for h in shown if h in view.hosts]
    vm_rows = [v for v in view.vms.values() if v.host in shown or (not hosts and not v.host)]
    failures = [f for f in view.failures if not hosts or f.host in shown]
    late = [h.host for h in host_rows if view.late(h, now) is not None]
    down = [h.host for h in host_rows if view.down(h, now)]
    head = Text(
        cell(
            f"{title}: {len(host_rows)} host(s), {len(vm_rows)} VM(s),"
            f" {view.applied} event(s), at {datetime.fromtimestamp(now, UTC):%H:%M:%S} UTC",
            200,
        )
    )
    if down:
        head.append(f"   DOWN: {cell(', '.join(sorted(down)), 200)}", style="bold red")
    if late:
        head.append(f"   LATE: {cell(', '.join(sorted(late)), 200)}", style="bold red")
    hidden = len(view.hosts) - len(host_rows)
    if hidden and not hosts:
        head.append(f"   ({hidden} offline host(s) hidden)", style="dim")
    parts: list[RenderableType] = [head]
    if failures:
        parts.append(_failures(failures, max_failures))
    parts.append(_hosts(view, host_rows, now, depths))
    parts.append(_vms(view, vm_rows, now, max_vms))
    return Panel(Group(*parts), border_style="blue")


def _failures(failures: list[Failure], limit: int) -> Table:
    fails = Table(title="Recent failures", title_justify="left", expand=True)
    for col in ("when", "host", "vm", "op", "error", "hook", "stderr"):
        fails.add_column(col, overflow="fold")
    newest = sorted(failures, key=lambda f: -f.at)
    for f in newest[: max(1, limit)]:
        fails.add_row(
            _clock(f.at),
            cell(f.host or "-", 40),
            cell(f.vm_name or (f.vm or "-")[:8], 40),
            cell(f.op or "-", 30),
            cell(f.error, 160),
            cell(f.hook or "-", 40),
            text_cell(f.stderr or ""),
        )
    if len(newest) > limit:
        fails.caption = f"... and {len(newest) - limit} older"
    return fails


def _hosts(
    view: FleetView, rows: list[HostRow], now: float, depths: Mapping[str, int | None] | None
) -> Table:
    hosts = Table(title="Hosts", title_justify="left", expand=True)
    for col in (
        "host",
        "status",
        "last heartbeat",
        "worker",
        "libvirt / hypervisor",
        "domains",
        "queue",
        "outbox",
        "hooks",
    ):
        hosts.add_column(col, overflow="fold")
    for h in sorted(rows, key=lambda r: (view.host_rank(r, now), r.host)):
        state = view.status(h, now)
        queue = _num(h.queue_depth)
        if state in ("down", "offline"):  # its heartbeat's depth is stale: the broker's
            depth = (depths or {}).get(h.host)
            queue = "?" if depth is None else str(depth)
        if state == "down":
            status = Text(f"DOWN ({view.silent_for(h, now) or 0:.0f}s)", style="bold red")
        elif state == "late":
            status = Text(f"LATE ({view.late(h, now) or 0:.0f}s)", style="bold red")
        else:
            status = Text(h.status, style="green" if h.status == "online" else "dim")
        domains = _num(h.domains)
        if h.stale:  # what the VMs table says of it may be old
            status.append(" inventory stale", style="yellow")
        hosts.add_row(
            cell(h.host, 40),
            status,
            _age(now, h.last_seen),
            cell(h.version or "-", 40),
            cell(f"{h.libvirt or '-'} / {h.hypervisor or '-'}", 60),
            domains,
            queue,
            _num(h.outbox),
            _num(h.hooks),
        )
    return hosts


def _vms(view: FleetView, rows: list[VmRow], now: float, limit: int) -> Table:
    vms = Table(title="VMs", title_justify="left", expand=True)
    for col in ("vm", "host", "state", "last change", "last operation", "result", "when", "detail"):
        vms.add_column(col, overflow="fold")
    ranked = sorted(rows, key=lambda v: (view.vm_rank(v, now), -v.at, v.name or v.uuid))
    for vm in ranked[:limit]:
        result = Text(
            cell(vm.result or "-", 20),
            style={"ok": "green", "failed": "bold red", "running": "cyan"}.get(vm.result or "", ""),
        )
        state = view.vm_state(vm, now)
        vms.add_row(
            f"{cell(vm.name or '-', 40)} {vm.uuid[:8]}",
            cell(vm.host or "-", 40),
            Text(state, style=_STATE_STYLE.get(state, "")),
            cell(vm.last_change or "-", 40),
            cell(vm.last_op or "-", 30),
            result,
            _clock(vm.at),
            cell(vm.error or "", 160),
        )
    if len(ranked) > limit:
        vms.caption = (
            f"... and {len(ranked) - limit} more (quieter: sorted by what needs attention)"
        )
    return vms


def _num(n: int | None) -> str:
    return "-" if n is None else str(n)


class BrokerDepths:
    """The depth of hosts' queues (`<prefix>.ops.<host>`), each read with a passive declare
    (public kombu API; needs no permission) on a connection of its own, at most every `every`
    seconds per host: redraws run in another thread than the one reading events."""

    def __init__(self, connect: Callable[[], Any], prefix: str, *, every: float = 5.0) -> None:
        from worker.heartbeat import QueueDepth

        self.prefix = prefix
        self.every = every
        self._read = QueueDepth(connect, "")
        self._known: dict[str, tuple[float, int | None]] = {}

    def __call__(self, hosts: list[str]) -> dict[str, int | None]:
        now = time.monotonic()
        for host in hosts:
            at, _ = self._known.get(host, (float("-inf"), None))
            if now - at >= self.every:
                self._known[host] = (now, self._read(f"{self.prefix}.ops.{host}"))
        return {h: self._known[h][1] for h in hosts}

    def close(self) -> None:
        self._read.close()


def load_fleet(
    conn: Any,
    topology: Any,
    *,
    idle: float = 1.0,
    view: FleetView | None = None,
    progress: Callable[[FleetView, float | None], None] | None = None,
    every: float = 0.25,
) -> FleetView:
    """A view of everything in the events log stream (read from its first offset); with
    `progress`, called at most every `every` seconds while reading, with the view so far and
    the time of the last event read."""
    from worker.subscribe import read_events

    view = view or FleetView()
    shown = time.monotonic()
    for ev in read_events(conn, topology, from_start=True, idle_timeout=idle):
        view.apply(ev)
        if progress is not None and time.monotonic() - shown >= every:
            progress(view, parse_time(ev.get("time")))
            shown = time.monotonic()
    return view


def progress_line(view: FleetView, at: float | None, now: float | None = None) -> str:
    """What a monitor says while it reads the log: how far it got."""
    now = time.time() if now is None else now
    when = "" if at is None else f", now at events of {_age(now, at)}"
    return (
        f"reading the events log: {view.applied} event(s), {len(view.hosts)} host(s), "
        f"{len(view.vms)} VM(s){when}"
    )


@click.command()
@connection_options
@click.option("--once", is_flag=True, help="replay the events log, print the picture, exit")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="show only this host, its VMs and failures (repeatable)",
)
@click.option(
    "--offline-after",
    type=float,
    help="hide hosts that said goodbye longer ago than this, seconds "
    "(default: the monitor_offline_after setting)",
)
@click.option(
    "--max-vms",
    type=int,
    help="VM rows shown, those needing attention first (default: what fits the terminal; "
    "200 with --once)",
)
@click.option(
    "--idle",
    type=float,
    default=1.0,
    show_default=True,
    help="the log replay is over after this many quiet seconds",
)
@click.option(
    "--refresh", type=float, default=1.0, show_default=True, help="seconds between redraws"
)
@click.option("--width", type=int, help="terminal width for --once (default: detected)")
@click.option("--fleet-url", help="ask this fleet server instead of reading the streams")
def monitor(
    broker: str | None,
    prefix: str | None,
    config: Path | None,
    once: bool,
    hosts: tuple[str, ...],
    offline_after: float | None,
    max_vms: int | None,
    idle: float,
    refresh: float,
    width: int | None,
    fleet_url: str | None = None,
) -> None:
    """A live view of hosts and VMs, from events only: recent failures with the failing hook's
    stderr on top, then hosts and VMs, those needing attention first (down or late hosts, failed
    operations, VMs whose host is down are `unknown`); the queue depth of a down or offline host
    is the broker's. Hosts that said goodbye are hidden after --offline-after seconds."""
    from rich.live import Live

    from worker.subscribe import live_queue, read_events
    from worker.topology import Topology

    s = settings_or_exit(config, broker=broker, prefix=prefix, fleet_url=fleet_url)
    topo = Topology.from_settings(s)
    console = Console(width=width) if width else Console()
    after = s.monitor_offline_after if offline_after is None else offline_after
    if s.fleet_url:  # the fleet server answers (worker/fleet/remote.py)
        from worker.fleet import remote

        draw = partial(
            render,
            title=f"vmworker fleet ({s.fleet_url})",
            hosts=hosts,
            offline_after=after,
            max_vms=max_vms or 200,
        )
        return remote.monitor(s.fleet_url, console, once=once, refresh=refresh, draw=draw)
    err = Console(stderr=True)
    depths = BrokerDepths(lambda: connect_or_exit(s), s.prefix, every=max(refresh, 2.0))
    with connect_or_exit(s) as conn, contextlib.closing(depths):
        if s.declare_shared:
            topo.declare_shared(conn)
        live_q = None
        if not once:  # bound before the replay: nothing published meanwhile is missed
            live_q = live_queue(topo).bind(conn.default_channel)
            live_q.declare()
        with err.status(progress_line(FleetView(), None)) as status:
            view = load_fleet(
                conn,
                topo,
                idle=idle,
                progress=lambda v, at: status.update(progress_line(v, at)),
            )
        title = f"vmworker fleet ({s.prefix})"
        draw = partial(render, title=title, hosts=hosts, offline_after=after)
        if once:
            now = time.time()
            known = depths(view.stale_depth_hosts(now))
            console.print(draw(view, now, depths=known, max_vms=max_vms or 200))
            return
        lock = threading.Lock()

        def picture() -> RenderableType:
            now = time.time()
            with lock:
                stale = view.stale_depth_hosts(now)
            known = depths(stale)  # outside the lock: the broker may be slow to answer
            # what fits: the terminal less the head, the hosts and the failures shown
            rows = max_vms or max(5, console.height - 20 - LIVE_FAILURES - len(view.hosts))
            with lock:
                return draw(view, now, depths=known, max_vms=rows, max_failures=LIVE_FAILURES)

        try:
            with Live(
                get_renderable=picture,
                console=console,
                refresh_per_second=1 / max(refresh, 0.1),
                screen=False,
            ):
                for ev in read_events(conn, topo, queue=live_q, follow=True):
                    with lock:
                        view.apply(ev)
        except KeyboardInterrupt:
            pass
