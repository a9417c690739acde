"""`vmworker drain HOST --to HOST2 ...`: move every VM running on HOST with `migrate_vm`.

Which VMs run on HOST is learnt from events only (worker/drainplan.py): the events log stream
read from `--lookback` seconds ago, then live events of the hosts' heartbeats, state events and
HOST's `migrate_vm` events, through the client library's queue (vmworker.client), bound before
the log is read so that nothing falls in between; the migrations are published with it too.
The plan is round-robin over the `--to` hosts, or `--by-memory` (each destination's free memory
from its heartbeat). With `--wait` the migrations run `--parallel` at a time, each
with a progress bar fed by `<HOST>.migrate_vm.progress`, and a results table ends the run (exit
1 if any VM did not move); without it, every `migrate_vm` is published at once and their
request ids printed (the source worker runs them at its own concurrency). See
docs/operations.md.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from kombu import Connection
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from worker.bounds import cell
from worker.cliopts import BrokerFailure, connect_or_exit, connection_options, settings_or_exit
from worker.drainplan import MIGRATE, DrainRun, Inventory, Move, plan_by_memory, plan_round_robin
from worker.topology import Topology

if TYPE_CHECKING:
    from vmworker.client import Watch

SILENT_BEATS = 3.5  # the source is taken as down after this many intervals of silence...
SILENT_MIN_S = 60.0  # ...and never sooner than this
_OUTCOME_STYLE = {
    "not_sent": "red",
    "ok": "green",
    "gone": "yellow",
    "failed": "bold red",
    "no_outcome": "red",
    "unplaced": "red",
}


def watch_keys(source: str, destinations: list[str]) -> list[str]:
    """What a drain reads live: the hosts' inventories, the source's state events and its
    migrations' events (bound on the client's queue, a tap queue a control-plane identity may
    declare: docs/security.md)."""
    keys = [f"{source}.host.*", f"{source}.state.*", f"{source}.{MIGRATE}.*"]
    return keys + [f"{d}.host.*" for d in destinations]


def read_log_since(conn: Connection, topology: Topology, since: datetime) -> list[dict[str, Any]]:
    """The events log from the stream chunk holding `since` (so a little earlier) to now."""
    from worker.history import read_messages
    from worker.subscribe import vouched

    q = topology.events_log_from(since)
    out = []
    for m in read_messages(conn, q, idle=0.5):
        try:
            ev = json.loads(m.body)
        except ValueError:
            continue
        if isinstance(ev, dict) and vouched(ev, m.delivery_info.get("routing_key")):
            out.append(ev)
    return out


def learn(
    conn: Connection,
    topology: Topology,
    reader: Watch,
    hosts: list[str],
    *,
    lookback: float,
    wait: float,
) -> Inventory:
    """The inventory of `hosts` (the source first) from the events log, then live events until
    each of them has sent a heartbeat and the source its inventory (at most `wait` seconds
    more)."""
    inv = Inventory()
    for ev in read_log_since(conn, topology, datetime.now(UTC) - timedelta(seconds=lookback)):
        inv.apply(ev)
    end = time.monotonic() + wait
    while True:
        for ev in reader.poll(0.2):
            inv.apply(ev)
        if all(inv.known(h, source=h == hosts[0]) for h in hosts) or time.monotonic() > end:
            return inv


def _check_hosts(inv: Inventory, source: str, destinations: list[str]) -> None:
    now = time.time()
    for h in [source, *destinations]:
        status = inv.status(h, now)
        if status in ("online", "late"):
            continue
        role = "its worker runs the migrations" if h == source else "it receives VMs"
        said = "sent no heartbeat" if status == "unknown" else f"is {status}"
        raise BrokerFailure(f"host {h} {said}: nothing sent ({role})")


def _plan(inv: Inventory, source: str, destinations: list[str], by_memory: bool) -> list[Move]:
    vms = inv.vms_on(source)
    if not by_memory:
        return plan_round_robin(vms, destinations)
    try:
        return plan_by_memory(vms, {d: inv.free_mib(d) for d in destinations})
    except ValueError as exc:
        raise click.ClickException(f"--by-memory: {exc}") from None


def _body(move: Move, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1,
        "op": MIGRATE,
        "vm": {"uuid": move.vm.uuid},
        "params": {**params, "destination": move.destination},
    }


def _check_bodies(moves: list[Move], params: dict[str, Any], max_bytes: int) -> None:
    """The worker's own check of each message, before anything is sent."""
    from worker.errors import OpError
    from worker.messages import parse_operation

    for m in moves:
        if m.destination is None:
            continue
        try:
            parse_operation(json.dumps(_body(m, params)).encode(), max_bytes=max_bytes)
        except OpError as exc:
            raise click.ClickException(f"invalid migrate_vm, nothing sent: {exc.message}") from None


def _table(moves: list[Move], *, title: str, results: bool) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("VM", "name", "MiB", "destination"):
        t.add_column(col)
    if results:
        for col in ("outcome", "duration", "error code", "error"):
            t.add_column(col)
    else:
        t.add_column("request id")
    for m in moves:
        cells = [
            cell(m.vm.uuid, 40),
            cell(m.vm.name or "?", 40),
            "?" if m.vm.memory_mib is None else str(m.vm.memory_mib),
            cell(m.destination or "-", 40),
        ]
        if results:
            style = _OUTCOME_STYLE.get(m.status, "")
            cells += [
                f"[{style}]{m.status}[/]" if style else m.status,
                "-" if m.duration is None else f"{m.duration:.1f} s",
                m.error_code or "",
                cell(m.error or "", 120),
            ]
        else:
            cells.append(m.request_id or "")
        t.add_row(*cells)
    return t


def _run(
    reader: Watch,
    run: DrainRun,
    publish: Any,
    inv: Inventory,
    source: str,
    *,
    timeout: float,
    console: Console,
) -> None:
    """Publish `run`'s moves, `parallel` at a time, until each has ended, or until the source
    host said it went offline or fell silent (its worker runs the migrations: no outcome would
    come). Silent is nothing at all from it, heartbeat or migration news, for SILENT_BEATS of
    its intervals and at least SILENT_MIN_S: a busy host's heartbeat may be late, its progress
    events say it is alive."""
    bars: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.fields[vm]:<24} -> {task.fields[dest]:<12}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[status]}"),
        console=console,
    ) as progress:
        for m in run.moves:
            bars[m.vm.uuid] = progress.add_task(
                "", total=100, vm=cell(m.vm.name or m.vm.uuid, 24),
                dest=cell(m.destination or "-", 12), status=m.status,
            )  # fmt: skip

        def show(m: Move) -> None:
            note = m.status
            if m.status == "running" and m.progress.get("iteration") is not None:
                note += f" (pass {m.progress['iteration']})"
            elif m.error_code:
                note += f": {m.error_code}"
            progress.update(bars[m.vm.uuid], completed=m.percent or 0.0, status=note)

        for m in run.moves:
            show(m)
        heard = time.monotonic()  # the inventory just heard from it
        while not run.done:
            for m in run.to_send():
                run.sent(m, publish(m), time.monotonic())
                show(m)
            for ev in reader.poll(0.2):
                inv.apply(ev)
                if ev.get("source") == f"vmworker://{source}":
                    heard = time.monotonic()
                moved = run.apply(ev, time.monotonic())
                if moved is not None:
                    show(moved)
            for m in run.expire(time.monotonic(), timeout):
                show(m)
            row = inv.view.hosts.get(source)
            silent = time.monotonic() - heard
            limit = max(SILENT_MIN_S, SILENT_BEATS * ((row.interval if row else None) or 30.0))
            offline = row is not None and row.status == "offline"
            if offline or silent > limit:
                why = "offline" if offline else "down"
                run.abort(time.monotonic(), f"source_{why}", f"host {source} is {why}")
                for m in run.moves:
                    show(m)


@click.command()
@click.argument("host")
@click.option("--to", "destinations", multiple=True, required=True, help="a destination host")
@click.option("--by-memory", is_flag=True, help="place by destinations' free memory")
@click.option("--parallel", type=int, help="with --wait: migrations at once (default 2)")
@click.option("--wait", is_flag=True, help="run the migrations, show them, report each outcome")
@click.option("--dry-run", is_flag=True, help="print the plan; send nothing")
@click.option("--param", "params", multiple=True, metavar="K=V", help="migrate_vm parameter")
@click.option(
    "--timeout",
    type=float,
    default=900.0,
    show_default=True,
    help="with --wait: seconds a migration may take before it counts as failed",
)
@click.option(
    "--lookback",
    type=float,
    help="read the events log from this many seconds ago (default: the inventory_interval "
    "setting and 10 minutes: the last inventory snapshot is in it)",
)
@click.option(
    "--inventory-wait",
    type=float,
    default=120.0,
    show_default=True,
    help="seconds to wait for a heartbeat of a host the log has none of",
)
@click.option("--json", "as_json", is_flag=True, help="the plan or the results as JSON")
@connection_options
def drain(
    host: str,
    destinations: tuple[str, ...],
    by_memory: bool,
    parallel: int | None,
    wait: bool,
    dry_run: bool,
    params: tuple[str, ...],
    timeout: float,
    lookback: float | None,
    inventory_wait: float,
    as_json: bool,
    broker: str | None,
    prefix: str | None,
    config: Path | None,
) -> None:
    """Move every VM running on HOST to the --to hosts with migrate_vm."""
    from vmworker.client import Client
    from worker.config import HOST_RE
    from worker.publish import parse_kv, require_host_queue

    dests = list(dict.fromkeys(destinations))
    for h in (host, *dests):
        if not HOST_RE.match(h):
            raise click.BadParameter(f"not a host id: {h!r}")
    if host in dests:
        raise click.BadParameter(f"{host} is the host being drained, not a destination")
    if parallel is not None and not wait and not dry_run:
        raise click.UsageError("--parallel paces the migrations as they end: it needs --wait")
    if parallel is not None and parallel < 1:
        raise click.BadParameter("--parallel must be at least 1")
    try:
        extra = parse_kv(params, typed=True)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if "destination" in extra:
        raise click.BadParameter("the destination comes from the plan (--to)")
    s = settings_or_exit(config, broker=broker, prefix=prefix)
    topo = Topology.from_settings(s)
    out = Console(width=None if Console().is_terminal else 200)
    err = Console(stderr=True)
    drain_id = str(uuid.uuid4())  # every migrate_vm's correlation id: `vmworker history`
    with connect_or_exit(s) as conn:
        if s.declare_shared:
            topo.declare_shared(conn)
        client = Client(settings=s, connection=conn)
        # bound before the log is read and before anything is published
        reader = client.watch(keys=watch_keys(host, dests))
        try:
            need = [host, *dests]
            back = s.inventory_interval + 600.0 if lookback is None else lookback
            inv = learn(conn, topo, reader, need, lookback=back, wait=inventory_wait)
            _check_hosts(inv, host, dests)
            moves = _plan(inv, host, dests, by_memory)
            if dry_run or not moves:
                _report(out, host, moves, as_json=as_json, results=False, dry_run=dry_run)
                return
            _check_bodies(moves, extra, s.max_body_bytes)
            for h in (host, *dests):
                require_host_queue(conn, topo, h)

            def publish(m: Move) -> str:
                return client.submit(
                    host, _body(m, extra), correlation_id=drain_id, check_queue=False,
                    validate=False,  # checked above
                ).request_id  # fmt: skip

            run = DrainRun(moves, parallel or 2)
            if not wait:
                for m in run.moves:
                    if m.destination is not None:
                        run.sent(m, publish(m), time.monotonic())
                _report(out, host, moves, as_json=as_json, results=False, dry_run=False)
                if run.failed:
                    raise SystemExit(1)
                return
            try:
                _run(reader, run, publish, inv, host, timeout=timeout, console=err)
            except KeyboardInterrupt:  # what was sent goes on: say where each one stood
                _report(out, host, run.moves, as_json=as_json, results=True, dry_run=False)
                err.print("interrupted: migrations already sent go on (vmworker monitor)")
                raise SystemExit(130) from None
        finally:
            client.close()
    _report(out, host, run.moves, as_json=as_json, results=True, dry_run=False)
    if run.failed:
        raise SystemExit(1)


def _report(
    out: Console, host: str, moves: list[Move], *, as_json: bool, results: bool, dry_run: bool
) -> None:
    if as_json:
        doc = {"host": host, "dry_run": dry_run, "moves": [m.row() for m in moves]}
        out.print_json(json.dumps(doc, default=str))
        return
    if not moves:
        out.print(f"no VM runs on {host}: nothing to move")
        return
    if results:
        ok = sum(m.status == "ok" for m in moves)
        gone = sum(m.status == "gone" for m in moves)
        title = f"drain of {host}: {ok} of {len(moves)} VM(s) moved"
        title += f", {gone} gone from it meanwhile" if gone else ""
    else:
        verb = "would move" if dry_run else "sent"
        title = f"drain of {host}: {verb} {len(moves)} VM(s)"
    out.print(_table(moves, title=title, results=results))
