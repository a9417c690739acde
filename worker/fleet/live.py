"""Live updates: the ingest thread hands each committed batch of stored events to a `Broadcaster`,
which fans them out to the server-sent-event streams of the HTTP clients (each an asyncio queue,
filled from the ingest thread with `call_soon_threadsafe`). A slow client loses its oldest
events, never blocks the ingest: its queue is bounded and it is told how many it missed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

QUEUE_MAX = 1000  # events held for one slow client before the oldest are dropped


def slim(row: dict[str, Any]) -> dict[str, Any]:
    """What a live client is told of a stored event: what it is and what it is about (the
    whole event is at /api/v1/events or in the request's history)."""
    at = row.get("at")
    if isinstance(at, int | float):
        at = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return {
        "id": row.get("id"),
        "at": at,
        "type": row.get("type"),
        "kind": row.get("kind"),
        "host": row.get("host"),
        "vm": row.get("vm_uuid") or row.get("vm"),
        "request_id": row.get("request_id"),
        "op": row.get("op"),
        "phase": row.get("phase"),
        "error_code": row.get("error_code"),
    }


@dataclass(eq=False)
class Subscriber:
    loop: asyncio.AbstractEventLoop
    host: str | None = None
    vm: str | None = None
    queue: asyncio.Queue[dict[str, Any]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUE_MAX)
    )
    dropped: int = 0

    def wants(self, ev: dict[str, Any]) -> bool:
        if self.host and ev.get("host") != self.host:
            return False
        return not (self.vm and ev.get("vm") != self.vm)

    def offer(self, ev: dict[str, Any]) -> None:
        """In the subscriber's event loop."""
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(ev)


class Broadcaster:
    """Thread-safe fan-out of stored events to the live streams."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: set[Subscriber] = set()
        self.published = 0

    def subscribe(self, host: str | None = None, vm: str | None = None) -> Subscriber:
        sub = Subscriber(asyncio.get_running_loop(), host, vm)
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, events: Iterable[dict[str, Any]]) -> None:
        """From any thread (the ingest's `on_commit`): each stored event, as `slim` makes it."""
        batch = [slim(ev) for ev in events]
        with self._lock:
            subs = list(self._subs)
            self.published += len(batch)
        for sub in subs:
            mine = [ev for ev in batch if sub.wants(ev)]
            if not mine:
                continue
            for ev in mine:
                try:
                    sub.loop.call_soon_threadsafe(sub.offer, ev)
                except RuntimeError:  # its loop is closed: the client is gone
                    self.unsubscribe(sub)
                    break
