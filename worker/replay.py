"""`vmworker replay`: publish chosen operation messages again.

Sources: the `<prefix>.ops.log` stream (every message ever published), or a host's dead-letter
queue (`--from-dead HOST`). Ids:

- from the ops log, by default the ORIGINAL message_id: where the request already finished,
  the worker runs nothing and re-sends its recorded terminal event marked `duplicate`;
- `--as-new`: a new message_id, with the header `x-replay-of: <original id>`; the worker runs it
  as a new request and puts `replay_of` in its events' data;
- from a dead-letter queue, `--as-new` is the default: a dead-lettered request that failed is
  finished in the host's journal, so its original id would only re-send the old failure. After
  the cause is fixed, a replay from the dead queue runs again. `--keep-id` keeps the original
  id (for a message the broker dead-lettered before the worker finished it).

A replay keeps the original's headers but those of a past delivery (`_DROP_HEADERS`), so its
W3C `traceparent`/`tracestate` too: the worker starts a new trace for it, linked to the
original's (docs/operations.md, Tracing).

`--from-queue HOST` takes the messages still waiting in a stopped host's own queue (original ids
by default): with `--to-host` it drains that host.

A message taken from a queue is removed from it only once the broker has confirmed the new
publish (manual ack after the confirm); the messages not chosen are returned to the queue.
The choosing and publishing are the client library's (`vmworker.client.Client.replay`,
vmworker/replay.py); `--wait` waits on the handles it returns. See docs/operations.md.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from vmworker.replay import Planned, Selection
from worker.bounds import cell
from worker.cliopts import connect_or_exit, connection_options, idle_option, settings_or_exit
from worker.topology import Topology

_REL = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_when(value: str | None) -> datetime | None:
    """ISO 8601 (`2026-01-31T12:00:00Z`) or a time ago (`90s`, `30m`, `2h`, `1d`)."""
    if not value:
        return None
    rel = _REL.match(value.strip())
    if rel:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[rel.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: float(rel.group(1))})
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"not a time: {value!r} (ISO 8601, or 30m / 2h / 1d)") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def outcome_word(ev: dict[str, Any] | None) -> str:
    if ev is None:
        return "no outcome yet"
    data = ev["data"]
    if data.get("duplicate"):
        return f"duplicate (recorded outcome: {data['phase']}; nothing ran)"
    if data["phase"] == "after":
        return "ran: after" + (" (no-op)" if data.get("noop") else "")
    err = data.get("error") or {}
    return f"ran: fail ({err.get('source')}/{err.get('code')}: {err.get('message')})"


@click.command()
@click.option(
    "--from-dead",
    "from_dead",
    metavar="HOST",
    help="take messages from HOST's dead-letter queue instead of the ops log",
)
@click.option(
    "--from-queue",
    "from_queue",
    metavar="HOST",
    help="take messages waiting in HOST's operation queue (its worker stopped): to drain it",
)
@click.option("--request-id", "request_ids", multiple=True, help="this request (repeatable)")
@click.option("--vm", help="operations on this VM (uuid)")
@click.option("--op", help="operations of this kind (start_vm, ...)")
@click.option("--host", help="operations that were sent to this host")
@click.option("--since", help="published at or after (ISO 8601, or 30m / 2h / 1d ago)")
@click.option("--until", help="published at or before (ISO 8601, or 30m / 2h / 1d ago)")
@click.option("--all", "take_all", is_flag=True, help="no criterion: replay everything")
@click.option(
    "--as-new/--keep-id",
    "as_new",
    default=None,
    help="new message ids (x-replay-of = original) or the original ones; default:"
    " original ids from the ops log and a host's queue, new ids from a dead-letter queue",
)
@click.option("--to-host", help="send to this host instead of the original one")
@click.option("--dry-run", is_flag=True, help="list what would be sent; send nothing")
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=0.0,
    show_default=True,
    help="wait this many seconds for each replay's outcome and report it",
)
@click.option("--json", "as_json", is_flag=True, help="report as JSON")
@connection_options
@idle_option("the ops log is read once nothing arrives for this many seconds")
def replay(
    from_dead: str | None,
    from_queue: str | None,
    request_ids: tuple[str, ...],
    vm: str | None,
    op: str | None,
    host: str | None,
    since: str | None,
    until: str | None,
    take_all: bool,
    as_new: bool | None,
    to_host: str | None,
    dry_run: bool,
    wait_s: float,
    as_json: bool,
    broker: str | None,
    prefix: str | None,
    config: Path | None,
    idle: float,
) -> None:
    """Publish operation messages again, chosen from the ops log, a dead-letter queue or a
    host's operation queue."""
    from vmworker.client import Client, Event, OperationFailed, RequestTimeout
    from vmworker.replay import NoSuchQueue
    from worker.config import HOST_RE

    sel = Selection(request_ids, vm, op, host, parse_when(since), parse_when(until))
    if sel.empty and not take_all:
        raise click.UsageError(
            "choose messages (--request-id, --vm, --op, --host, --since, --until) or say --all"
        )
    if from_dead and from_queue:
        raise click.UsageError("--from-dead and --from-queue: one source at a time")
    for h in (from_dead, from_queue, to_host):
        if h is not None and not HOST_RE.match(h):
            raise click.BadParameter(f"not a host id: {h!r}")
    s = settings_or_exit(config, broker=broker, prefix=prefix)
    topo = Topology.from_settings(s)
    outcomes: dict[str, dict[str, Any]] = {}
    with connect_or_exit(s) as conn:
        if s.declare_shared:
            topo.declare_shared(conn)
        client = Client(settings=s, connection=conn)
        try:
            planned = client.replay(
                sel, every=True, from_dead=from_dead, from_queue=from_queue, as_new=as_new,
                to_host=to_host, dry_run=dry_run, idle=idle,
            )  # fmt: skip
        except NoSuchQueue as exc:
            raise click.ClickException(str(exc)) from None
        end = time.monotonic() + wait_s
        for p in planned if wait_s > 0 else []:
            if p.request is None:
                continue
            try:  # one time limit for all of them
                ev: Event = p.request.result(max(0.0, end - time.monotonic()))
            except OperationFailed as exc:
                ev = exc.event
            except RequestTimeout:
                continue
            outcomes[p.new_id] = ev
        client.close()
    _report(planned, outcomes, dry_run=dry_run, waited=wait_s > 0, as_json=as_json)
    if wait_s > 0 and not dry_run:
        bad = [
            p
            for p in planned
            if outcomes.get(p.new_id) is None or outcomes[p.new_id]["data"]["phase"] == "fail"
        ]
        if bad:
            raise SystemExit(1)


def _report(
    planned: list[Planned],
    outcomes: dict[str, dict[str, Any]],
    *,
    dry_run: bool,
    waited: bool,
    as_json: bool,
) -> None:
    rows = []
    for p in planned:
        row = p.row()
        if waited and not dry_run:
            ev = outcomes.get(p.new_id)
            row["outcome"] = outcome_word(ev)
            row["duplicate"] = bool(ev and ev["data"].get("duplicate"))
            row["phase"] = ev["data"]["phase"] if ev else None
        rows.append(row)
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "replays": rows}, indent=2, default=str))
        return
    verb = "would send" if dry_run else "sent"
    if not rows:
        click.echo("nothing matched")
        return
    for r in rows:  # each value from a message cut to a bounded length
        ids = cell(r["request_id"])
        if r["as_new"]:
            ids += f" as {cell(r['new_request_id'])}"
        line = f"{verb} {cell(r['op'] or '?', 40)} vm={cell(r['vm'] or '?', 40)}"
        line += f" {cell(r['from_host'], 40)} -> {cell(r['to_host'], 40)}  {ids}  [{r['source']}]"
        if r.get("dead_reason"):
            line += f"  dead: {cell(r['dead_reason'], 300)}"
        if "outcome" in r:
            line += f"\n    {cell(r['outcome'], 300)}"
        click.echo(line)
    click.echo(f"{len(rows)} message(s) {verb}")
