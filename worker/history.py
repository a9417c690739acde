"""`vmworker history`: everything that happened to a request or a VM, in order.

Both streams are read from their first offset: `<prefix>.ops.log` (every operation message
published, replays included) and `<prefix>.events.log` (every event). A request's history also
shows its replays (`x-replay-of` on the message, `replay_of` in the events) and state events
that libvirt reported while it ran (`during_request`).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from kombu import Connection, Consumer, Queue
from kombu.message import Message

from worker.bounds import cell
from worker.cliopts import connect_or_exit, connection_options, idle_option, settings_or_exit
from worker.messages import redact_body
from worker.monitor import parse_time
from worker.subscribe import vouched
from worker.topology import Topology

LINE_MAX = 300  # characters of one detail line (an error, a line of stderr)
STDERR_LINES = 20  # lines of stderr shown per event (--json has them all)


@dataclass
class LogMessage:
    """One operation message as the ops log stream keeps it."""

    offset: int | None
    routing_key: str
    message_id: str | None
    correlation_id: str | None
    timestamp: float | None  # AMQP timestamp: whole seconds
    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes
    doc: dict[str, Any] | None = field(default=None)  # the body, if it is a JSON object

    @classmethod
    def of(cls, message: Message) -> LogMessage:
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        headers = dict(message.headers or {})
        props = dict(message.properties)
        ts = props.get("timestamp")
        if isinstance(ts, datetime):
            ts = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        return cls(
            headers.get("x-stream-offset"),
            str(message.delivery_info.get("routing_key") or ""),
            props.get("message_id"),
            props.get("correlation_id"),
            float(ts) if isinstance(ts, int | float) else None,
            headers,
            props,
            body,
            doc if isinstance(doc, dict) else None,
        )

    @property
    def op(self) -> str | None:
        return str(self.doc.get("op")) if self.doc and self.doc.get("op") else None

    @property
    def vm_uuid(self) -> str | None:
        vm = (self.doc or {}).get("vm")
        return str(vm.get("uuid")) if isinstance(vm, dict) and vm.get("uuid") else None

    @property
    def replay_of(self) -> str | None:
        r = self.headers.get("x-replay-of")
        return str(r) if r else None


def read_messages(
    conn: Connection, queue: Queue, *, idle: float = 1.0, limit: int | None = None
) -> list[Message]:
    """Every message of a stream queue from the consumer offset of `queue`, acked as read;
    the read is over once nothing arrives for `idle` seconds."""
    got: list[Message] = []
    with conn.channel() as ch:
        ch.basic_qos(0, 1000, False)

        def on_message(m: Message) -> None:
            got.append(m)
            m.ack()

        consumer = Consumer(ch, queues=[queue], on_message=on_message, no_ack=False)
        consumer.consume()
        last, n = time.monotonic(), 0
        while time.monotonic() - last < idle and (limit is None or len(got) < limit):
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=min(0.2, idle))
            if len(got) != n:
                last, n = time.monotonic(), len(got)
        consumer.cancel()
    return got


def read_ops_log(
    conn: Connection, topology: Topology, *, idle: float = 1.0, since: datetime | None = None
) -> list[LogMessage]:
    """The ops log, from its start (or from the chunk holding `since`)."""
    offset: object = since if since is not None else "first"
    q = topology.ops_log_from(offset)
    return [LogMessage.of(m) for m in read_messages(conn, q, idle=idle)]


def read_events_log(
    conn: Connection, topology: Topology, *, idle: float = 1.0
) -> list[dict[str, Any]]:
    q = topology.events_log_from("first")
    out = []
    for m in read_messages(conn, q, idle=idle):
        try:
            ev = json.loads(m.body)
        except ValueError:
            continue
        rk = m.delivery_info.get("routing_key")
        if isinstance(ev, dict) and vouched(ev, rk):  # a body claiming another host is forged
            ev["_routing_key"] = rk
            out.append(ev)
    return out


# -- the timeline ---------------------------------------------------------------------------
def _event_matches(ev: dict[str, Any], request_id: str | None, vm: str | None) -> bool:
    data = ev.get("data") or {}
    if request_id:
        return request_id in (
            ev.get("requestid"),
            data.get("replay_of"),
            data.get("during_request"),
        )
    return bool(vm) and ev.get("subject") == vm


def _op_matches(m: LogMessage, request_id: str | None, vm: str | None) -> bool:
    if request_id:
        return request_id in (m.message_id, m.replay_of)
    return bool(vm) and m.vm_uuid == vm


def timeline(
    ops: list[LogMessage],
    evs: list[dict[str, Any]],
    *,
    request_id: str | None = None,
    vm: str | None = None,
) -> list[dict[str, Any]]:
    """The entries about a request (and its replays) or a VM, oldest first.

    An op message's AMQP timestamp has whole seconds only; it is placed just before the first
    event of its request at or after that second (where the worker picked it up), else at it."""
    chosen_evs = [e for e in evs if _event_matches(e, request_id, vm)]
    entries: list[tuple[float, int, int, dict[str, Any]]] = []
    by_request: dict[str, list[float]] = {}
    for e in chosen_evs:
        t = parse_time(e.get("time")) or 0.0
        if e.get("requestid"):
            by_request.setdefault(e["requestid"], []).append(t)
    for times in by_request.values():
        times.sort()
    for i, e in enumerate(chosen_evs):
        entries.append((parse_time(e.get("time")) or 0.0, 1, i, _event_entry(e)))
    for i, m in enumerate(o for o in ops if _op_matches(o, request_id, vm)):
        t = m.timestamp or 0.0
        times = by_request.get(m.message_id or "", [])
        k = bisect.bisect_left(times, t)
        if k < len(times) and times[k] < t + 1.0:
            t = times[k]
        entries.append((t, 0, i, _op_entry(m)))
    entries.sort(key=lambda x: (x[0], x[1], x[2]))
    return [e for _, _, _, e in entries]


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _op_entry(m: LogMessage) -> dict[str, Any]:
    return {
        "kind": "message",
        "time": _iso(m.timestamp),
        "host": m.routing_key,
        "request_id": m.message_id,
        "correlation_id": m.correlation_id,
        "op": m.op,
        "vm": m.vm_uuid,
        "replay_of": m.replay_of,
        "what": "published",
        "headers": {k: v for k, v in m.headers.items() if k != "x-stream-offset"},
        "body": _shown_body(m),
    }


def _shown_body(m: LogMessage) -> Any:
    """The body, its secrets (a `set_ticket` password) as `***`; a body that is not a JSON
    object is shown only if it cannot hide one."""
    if m.doc is not None:
        return redact_body(m.doc)
    text = m.body.decode("utf-8", "replace")
    return "(not a JSON object: not shown)" if "password" in text else text


def _event_entry(ev: dict[str, Any]) -> dict[str, Any]:
    data = ev.get("data") or {}
    kind = str(ev.get("type", "")).removeprefix("vmworker.")
    return {
        "kind": "event",
        "time": ev.get("time"),
        "host": data.get("host"),
        "request_id": ev.get("requestid"),
        "op": data.get("op"),
        "vm": (data.get("vm") or {}).get("uuid") or ev.get("subject"),
        "replay_of": data.get("replay_of"),
        "what": kind,
        "event": ev,
    }


def format_entry(entry: dict[str, Any]) -> list[str]:
    """One timeline entry as text: a headline, then indented detail lines; every value from a
    message or an event cut to a bounded length (`cell`), at most STDERR_LINES stderr lines."""
    when = cell(entry["time"] or "-", 32)
    if entry["kind"] == "message":
        when = when.replace(".000Z", "Z")  # whole seconds only: do not pretend otherwise
    rid = cell(entry.get("request_id") or "-", 80)[:8]
    pad = " " * 46
    if entry["kind"] == "message":
        line = f"{when:<24}  {rid:<8}  {'published':<10}  {cell(entry['op'] or '(not an op)', 40)}"
        line += f" -> {cell(entry['host'], 40)}"
        if entry.get("vm"):
            line += f", vm {cell(entry['vm'], 40)}"
        lines = [line]
        if entry.get("replay_of"):
            lines.append(f"{pad}replay of {cell(entry['replay_of'])}")
        return lines
    ev = entry["event"]
    data = ev.get("data") or {}
    what = cell(entry["what"], 40)
    if what.startswith("state."):
        line = f"{when:<24}  {'':<8}  {what:<10}  {cell(data.get('reason'), 40)},"
        line += f" domain {cell(data.get('domain_state'), 40)}"
        if data.get("during_request"):
            line += f" (during request {cell(data['during_request'])})"
        return [line]
    phase = cell(data.get("phase"), 10)
    line = f"{when:<24}  {rid:<8}  {phase.upper() if phase == 'fail' else phase:<10}"
    line += f"  {cell(data.get('op'), 40)}"
    if phase in ("after", "fail"):
        line += f": state {cell(data.get('state'), 40)}, {_ms(data.get('duration_ms'))} ms,"
        line += f" attempt {cell(data.get('attempt'), 10)}"
    flags = [f for f in ("duplicate", "recovered", "redelivered", "noop") if data.get(f)]
    if flags:
        line += "  [" + ", ".join(flags) + "]"
    lines = [line]
    if data.get("replay_of"):
        lines.append(f"{pad}replay of {cell(data['replay_of'])}")
    err = data.get("error")
    if isinstance(err, dict):
        text = f"{err.get('source')}/{err.get('code')}: {err.get('message')}"
        lines.append(f"{pad}{cell(text, LINE_MAX)}")
        lines += [f"{pad}stderr {part}" for part in _lines(err.get("stderr"))]
    for h in data.get("hooks") or []:
        if isinstance(h, dict) and h.get("rc") not in (0, None) and not (err and err.get("stderr")):
            tail = " | ".join(str(h.get("stderr_tail") or "").strip().splitlines())
            head = f"hook {cell(h.get('point'), 40)}/{cell(h.get('name'), 40)} rc={h.get('rc')}"
            lines.append(f"{pad}{head}: {cell(tail, LINE_MAX)}")
    return lines


def _ms(value: Any) -> str:
    try:
        return f"{float(value or 0):.0f}"
    except (TypeError, ValueError):
        return "?"


def _lines(text: Any) -> list[str]:
    """Up to STDERR_LINES lines of `text`, each cut to LINE_MAX characters."""
    rows = str(text or "").splitlines()
    if len(rows) > STDERR_LINES:
        rows = [*rows[: STDERR_LINES - 1], f"[{len(rows) - STDERR_LINES + 1} more lines]"]
    return [cell(r, LINE_MAX) for r in rows]


_COLOURS = {"before": "cyan", "after": "green", "FAIL": "red", "published": "blue"}


def print_timeline(entries: list[dict[str, Any]]) -> None:
    """The entries as text, coloured on a terminal."""
    for entry in entries:
        head, *rest = format_entry(entry)
        word = head[36:46].strip()
        colour = _COLOURS.get(word, "yellow" if word.startswith("state.") else None)
        click.echo(click.style(head, fg=colour) if colour else head)
        failed = entry["what"].endswith(".fail")
        for line in rest:
            click.echo(click.style(line, fg="red") if failed else line)


@click.command()
@click.option("--request-id", help="this request (and its replays)")
@click.option("--vm", help="this VM (uuid): every operation and state event")
@click.option("--json", "as_json", is_flag=True, help="the entries as a JSON array")
@connection_options
@idle_option("a stream is read once nothing arrives for this many seconds")
@click.option("--fleet-url", help="ask this fleet server instead of reading the streams")
def history(
    request_id: str | None,
    vm: str | None,
    as_json: bool,
    broker: str | None,
    prefix: str | None,
    config: Path | None,
    idle: float,
    fleet_url: str | None = None,
) -> None:
    """Everything that happened to a request or a VM, from the ops and events logs."""

    if bool(request_id) == bool(vm):
        raise click.UsageError("give exactly one of --request-id and --vm")
    s = settings_or_exit(config, broker=broker, prefix=prefix, fleet_url=fleet_url)
    if s.fleet_url:  # the fleet server answers (worker/fleet/remote.py)
        from worker.fleet.remote import FleetClient, history_entries

        with FleetClient(s.fleet_url) as client:
            entries = history_entries(client, request_id=request_id, vm=vm)
    else:
        topo = Topology.from_settings(s)
        with connect_or_exit(s) as conn:
            if s.declare_shared:
                topo.declare_shared(conn)
            ops = read_ops_log(conn, topo, idle=idle)
            evs = read_events_log(conn, topo, idle=idle)
        entries = timeline(ops, evs, request_id=request_id, vm=vm)
    if as_json:
        click.echo(json.dumps(entries, indent=2, default=str))
        return
    if not entries:
        raise click.ClickException(f"nothing found for {request_id or vm}")
    what = f"request {request_id}" if request_id else f"VM {vm}"
    click.echo(f"history of {what}: {len(entries)} entries")
    print_timeline(entries)
