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
See docs/operations.md.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from kombu import Connection, Consumer, Producer, Queue
from kombu.message import Message

from worker.bounds import cell
from worker.cliopts import connect_or_exit, connection_options, settings_or_exit
from worker.history import LogMessage, read_ops_log
from worker.publish import NoWorkerQueue, require_host_queue
from worker.topology import Topology

# headers that describe a past delivery, not the operation: never copied to a replay
_DROP_HEADERS = (
    "x-death",
    "x-first-death-",
    "x-last-death-",
    "x-vmworker-",
    "x-stream-offset",
    "x-original-user-id",
    "x-original-expiration",
    "x-deadline",
    "x-delivery-count",
    "x-replay-of",
    "x-replayed-at",
)


@dataclass
class Selection:
    """What chooses messages; every given criterion must hold."""

    request_ids: tuple[str, ...] = ()
    vm: str | None = None
    op: str | None = None
    host: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.request_ids or self.vm or self.op or self.host or self.since or self.until)

    def matches(self, m: LogMessage) -> bool:
        if self.request_ids and m.message_id not in self.request_ids:
            return False
        if self.vm and m.vm_uuid != self.vm:
            return False
        if self.op and m.op != self.op:
            return False
        if self.host and m.routing_key != self.host:
            return False
        if self.since or self.until:
            if m.timestamp is None:
                return False  # no time to judge by
            # AMQP timestamps are whole seconds: compare at that resolution
            if self.since and m.timestamp < int(self.since.timestamp()):
                return False
            if self.until and m.timestamp > self.until.timestamp():
                return False
        return True


@dataclass
class Planned:
    message: LogMessage
    new_id: str
    target: str
    source: str  # "ops-log" | "dead:<host>" | "queue:<host>"
    raw: Message | None = None  # the dead-queue delivery, acked after the confirm
    sent: bool = False

    def row(self) -> dict[str, Any]:
        return {
            "request_id": self.message.message_id,
            "new_request_id": self.new_id,
            "as_new": self.new_id != self.message.message_id,
            "op": self.message.op,
            "vm": self.message.vm_uuid,
            "from_host": self.message.routing_key,
            "to_host": self.target,
            "source": self.source,
            "published_at": datetime.fromtimestamp(self.message.timestamp, UTC).isoformat()
            if self.message.timestamp
            else None,
            "dead_reason": self.message.headers.get("x-vmworker-reason"),
            "sent": self.sent,
        }


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


def replay_headers(m: LogMessage, *, replay_of: str | None) -> dict[str, Any]:
    headers = {k: v for k, v in m.headers.items() if not k.startswith(_DROP_HEADERS)}
    headers["x-replayed-at"] = datetime.now(UTC).isoformat()
    if replay_of:
        headers["x-replay-of"] = replay_of
    return headers


def publish_replay(
    conn: Connection, topology: Topology, p: Planned, *, check_queue: bool = True
) -> None:
    """Publish one planned replay and wait for the broker's confirm; NoWorkerQueue, and
    nothing sent, if its target host has no queue (unless `check_queue` is false: checked)."""
    if check_queue:
        require_host_queue(conn, topology, p.target)
    m = p.message
    replay_of = m.message_id if p.new_id != m.message_id else None
    props: dict[str, Any] = {}
    had_user = m.properties.get("user_id") or m.headers.get("x-original-user-id")
    if had_user and conn.userid:  # the broker checks user_id against this connection's user
        props["user_id"] = conn.userid
    with conn.channel() as ch:
        Producer(ch).publish(
            m.body,
            exchange=topology.ops,
            routing_key=p.target,
            content_type=m.properties.get("content_type") or "application/json",
            content_encoding=m.properties.get("content_encoding") or "utf-8",
            delivery_mode=2,
            message_id=p.new_id,
            correlation_id=m.correlation_id,
            timestamp=int(time.time()),
            headers=replay_headers(m, replay_of=replay_of),
            retry=False,
            **props,
        )
    p.sent = True


def from_ops_log(
    conn: Connection,
    topology: Topology,
    sel: Selection,
    *,
    as_new: bool,
    to_host: str | None,
    idle: float,
) -> list[Planned]:
    since = sel.since - timedelta(minutes=1) if sel.since else None  # chunk granularity
    seen: set[str] = set()
    out = []
    for m in read_ops_log(conn, topology, idle=idle, since=since):
        # a request and its replays (same id, or x-replay-of it) count once: the first copy
        root = m.replay_of or m.message_id
        if not sel.matches(m) or not m.message_id or not root or root in seen:
            continue
        seen.add(root)
        new_id = str(uuid.uuid4()) if as_new else m.message_id
        out.append(Planned(m, new_id, to_host or m.routing_key, "ops-log"))
    return out


def take_queued(
    conn: Connection,
    topology: Topology,
    host: str,
    sel: Selection,
    *,
    as_new: bool,
    to_host: str | None,
    dead: bool = True,
) -> tuple[list[Planned], list[Message]]:
    """Every message of HOST's dead queue (or, `dead=False`, of its operation queue), held
    unacked: (chosen, the rest)."""
    hosts = Topology(topology.prefix, host)
    name = hosts.dead_queue.name if dead else hosts.host_queue.name
    try:
        with conn.channel() as probe:
            probe.queue_declare(name, passive=True)
    except conn.channel_errors:
        raise click.ClickException(f"no queue {name}") from None
    ch = conn.channel()
    q: Queue = Queue(name, no_declare=True).bind(ch)
    source = f"{'dead' if dead else 'queue'}:{host}"
    chosen: list[Planned] = []
    rest: list[Message] = []
    while True:
        raw = q.get(no_ack=False)
        if raw is None:
            break
        m = LogMessage.of(raw)
        m.routing_key = host
        if sel.matches(m):
            new_id = str(uuid.uuid4()) if as_new or not m.message_id else m.message_id
            chosen.append(Planned(m, new_id, to_host or host, source, raw=raw))
        else:
            rest.append(raw)
    return chosen, rest


def wait_outcomes(
    conn: Connection, queue: Queue, ids: set[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """The first terminal event (after/fail) of each request id, read from a live queue."""
    got: dict[str, dict[str, Any]] = {}

    def on_message(m: Message) -> None:
        m.ack()
        try:
            ev = json.loads(m.body)
        except ValueError:
            return
        rid = ev.get("requestid") if isinstance(ev, dict) else None
        if (
            rid in ids
            and rid not in got
            and (ev.get("data") or {}).get("phase") in ("after", "fail")
        ):
            got[rid] = ev

    with conn.channel() as ch:
        consumer = Consumer(ch, queues=[queue], on_message=on_message, no_ack=False)
        consumer.consume()
        end = time.monotonic() + timeout
        while len(got) < len(ids) and time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.2)
        consumer.cancel()
    return got


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
@click.option(
    "--idle",
    type=float,
    default=1.0,
    show_default=True,
    help="the ops log is read once nothing arrives for this many seconds",
)
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
    from worker.config import HOST_RE
    from worker.subscribe import live_queue

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
    new_ids = as_new if as_new is not None else from_dead is not None
    rest: list[Message] = []
    with connect_or_exit(s) as conn:
        if s.declare_shared:
            topo.declare_shared(conn)
        if from_dead or from_queue:
            planned, rest = take_queued(
                conn,
                topo,
                str(from_dead or from_queue),
                sel,
                as_new=new_ids,
                to_host=to_host,
                dead=bool(from_dead),
            )
        else:
            planned = from_ops_log(conn, topo, sel, as_new=new_ids, to_host=to_host, idle=idle)
        outcomes: dict[str, dict[str, Any]] = {}
        try:
            if dry_run or not planned:
                rest += [p.raw for p in planned if p.raw is not None]
            else:
                try:  # every target first: nothing is sent if one of them has no queue
                    for target in sorted({p.target for p in planned}):
                        require_host_queue(conn, topo, target)
                except NoWorkerQueue:
                    rest += [p.raw for p in planned if p.raw is not None]
                    raise
                watch = None
                if wait_s > 0:  # bound before publishing: no outcome can slip past
                    watch = live_queue(topo).bind(conn.default_channel)
                    watch.declare()
                for p in planned:
                    publish_replay(conn, topo, p, check_queue=False)  # confirmed
                    if p.raw is not None:
                        p.raw.ack()
                if watch is not None:
                    outcomes = wait_outcomes(conn, watch, {p.new_id for p in planned}, wait_s)
        finally:
            for raw in rest:  # not chosen (or a dry run): back to the dead queue
                raw.reject(requeue=True)
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
