"""Choosing operation messages to publish again, and publishing them: shared by
`Client.replay` and `vmworker replay` (worker/replay.py, docs/operations.md).

Sources: the `<prefix>.ops.log` stream (every message ever published), a host's dead-letter
queue, or a stopped host's own operation queue. A message taken from a queue is removed from it
only once the broker has confirmed the new publish (manual ack after the confirm); the messages
not chosen are returned to the queue.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from kombu import Connection, Queue
from kombu.message import Message

from worker.history import LogMessage, read_ops_log
from worker.topology import Topology

if TYPE_CHECKING:
    from vmworker.client import Request

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


class NoSuchQueue(LookupError):
    """The dead-letter or operation queue to take messages from does not exist."""


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
    """One message to publish again: `new_id` is its request id (the original one, or a new
    one with `x-replay-of`); `request` is its handle once sent."""

    message: LogMessage
    new_id: str
    target: str
    source: str  # "ops-log" | "dead:<host>" | "queue:<host>"
    raw: Message | None = None  # the queue's delivery, acked after the confirm
    sent: bool = False
    request: Request | None = None

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


def replay_headers(m: LogMessage, *, replay_of: str | None) -> dict[str, Any]:
    headers = {k: v for k, v in m.headers.items() if not k.startswith(_DROP_HEADERS)}
    headers["x-replayed-at"] = datetime.now(UTC).isoformat()
    if replay_of:
        headers["x-replay-of"] = replay_of
    return headers


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
    unacked: (chosen, the rest). NoSuchQueue if there is no such queue."""
    hosts = Topology(topology.prefix, host)
    name = hosts.dead_queue.name if dead else hosts.host_queue.name
    try:
        with conn.channel() as probe:
            probe.queue_declare(name, passive=True)
    except conn.channel_errors:
        raise NoSuchQueue(f"no queue {name}") from None
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
