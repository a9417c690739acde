"""`vmworker monitor`: a live picture of hosts and VMs, built from events alone.

`FleetView.apply(event)` (worker/fleetview.py) folds one event into the picture (a pure class: no
broker, no clock of its own: questions about time take `now`); `render(view, now)` turns it into a
rich renderable, every cell cut to a bounded length. The command replays the `<prefix>.events.log`
stream from its start, so the picture is complete, then follows a live queue on `<prefix>.events`
(declared before the replay, so nothing falls in between; events seen twice are applied once). The
queue depth of a host that is down or offline is read from the broker, not from its last heartbeat.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Collection, Mapping
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
from worker.cliopts import connect_or_exit, connection_options, idle_option, settings_or_exit
from worker.fleetview import (  # noqa: F401 (the constants: imported from here by worker/fleet/)
    _STATE_OF_EVENT,
    DOWN_FACTOR,
    LATE_FACTOR,
    Failure,
    FleetView,
    HostRow,
    VmRow,
    parse_time,
)

TEXT_CELL_MAX = 400  # characters of a stderr cell
TEXT_CELL_LINES = 6  # lines of a stderr cell
LIVE_FAILURES = 5  # failures a live view shows (each up to TEXT_CELL_LINES tall); --once: 10
_STATE_STYLE = {
    "running": "green",
    "paused": "yellow",
    "shutoff": "dim",
    "crashed": "bold red",
    "undefined": "dim strike",
    "unknown": "magenta",
}


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
@idle_option("the log replay is over after this many quiet seconds")
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
