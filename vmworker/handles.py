"""What a control plane holds (vmworker/client.py makes them): `Event` (one CloudEvent as a dict,
with its fields as properties), `Request` (the handle of one submitted message: its events and
its outcome), `Watch` (events of a host, a VM or binding keys as they come) and the errors a
result raises (`OperationFailed`, `RequestTimeout`). Each reads the broker through its client, in
the thread that waits."""

from __future__ import annotations

import collections
import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmworker.client import Client

TERMINAL = ("after", "fail")


class InvalidMessage(ValueError):
    """The message is not one the worker would take (its own check, worker.messages); nothing
    was sent."""


class Event(dict[str, Any]):
    """One event: the CloudEvent as published (a dict), with shortcuts to what is looked at
    most."""

    @property
    def data(self) -> dict[str, Any]:
        d = self.get("data")
        return d if isinstance(d, dict) else {}

    @property
    def request_id(self) -> str | None:
        rid = self.get("requestid") or self.data.get("request_id")
        return str(rid) if rid else None

    @property
    def phase(self) -> str | None:
        return self.data.get("phase")

    @property
    def host(self) -> str | None:
        return self.data.get("host")

    @property
    def duplicate(self) -> bool:
        return bool(self.data.get("duplicate"))

    @property
    def error(self) -> dict[str, Any] | None:
        err = self.data.get("error")
        return err if isinstance(err, dict) else None

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL


class OperationFailed(Exception):
    """The request's terminal event is `fail`: `error` is its `data.error` (`source`, `code`,
    `message`, ...), `event` the whole event."""

    def __init__(self, event: Event) -> None:
        self.event = event
        self.error: dict[str, Any] = event.error or {}
        self.code: str | None = self.error.get("code")
        self.source: str | None = self.error.get("source")
        where = f"{event.data.get('op')} on {event.host}"
        dup = " (a duplicate: the recorded outcome)" if event.duplicate else ""
        super().__init__(
            f"{where} failed{dup}: {self.source}/{self.code}: {self.error.get('message')}"
        )


class RequestTimeout(TimeoutError):
    """No terminal event within the time given. The request is left alone: it may still run
    and finish, and `result()` may be called again."""

    def __init__(self, request_id: str, timeout: float | None) -> None:
        self.request_id = request_id
        super().__init__(
            f"no outcome of request {request_id} within {timeout} s (it was not cancelled)"
        )


class Request:
    """The handle of one submitted message: its events as they come (`events`), and its
    outcome (`result`). Kept by its client until its terminal event arrives."""

    def __init__(
        self, client: Client, request_id: str, host: str, op: str | None, correlation_id: str | None
    ) -> None:
        self.client = client
        self.request_id = request_id
        self.host = host
        self.op = op
        self.correlation_id = correlation_id
        self.events: list[Event] = []
        self.terminal: Event | None = None
        self._listeners: list[Callable[[Event], None]] = []

    def __repr__(self) -> str:
        state = self.terminal.phase if self.terminal else (self.phase or "sent")
        return f"<Request {self.request_id} {self.op} on {self.host}: {state}>"

    @property
    def phase(self) -> str | None:
        """The phase of the last event seen (`before`, `progress`, `after`, `fail`), or None."""
        return self.events[-1].phase if self.events else None

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """Call `callback` with each event of the request: those already seen, then each new one
        (in the thread that reads the broker)."""
        for ev in self.events:
            callback(ev)
        self._listeners.append(callback)

    def done(self) -> bool:
        """Whether the terminal event has arrived (reads what the broker has, without waiting)."""
        if self.terminal is None:
            self.client.poll(0)
        return self.terminal is not None

    def wait_phase(self, phase: str, timeout: float | None = None) -> Event:
        """The first event of `phase` (`before`, `progress`, ...); RequestTimeout if none came."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            for ev in self.events:
                if ev.phase == phase:
                    return ev
            if self.terminal is not None and phase not in TERMINAL:
                raise LookupError(f"request {self.request_id} ended with no {phase} event")
            self._tick(end, timeout)

    def result(self, timeout: float | None = None) -> Event:
        """The terminal `after` event (a duplicate's too); OperationFailed on `fail`;
        RequestTimeout after `timeout` seconds, leaving the request as it is."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.terminal is None:
            self._tick(end, timeout)
        if self.terminal.phase == "fail":
            raise OperationFailed(self.terminal)
        return self.terminal

    def _tick(self, end: float | None, timeout: float | None) -> None:
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            raise RequestTimeout(self.request_id, timeout)
        self.client.poll(0.5 if left is None else min(0.5, left))

    def _feed(self, ev: Event) -> None:
        if self.terminal is not None:
            return  # one outcome: a later copy (a duplicate's) changes nothing
        self.events.append(ev)
        if ev.terminal:
            self.terminal = ev
        for cb in self._listeners:
            cb(ev)


class Watch(Iterator[Event]):
    """Events of a host and/or a VM (or of the given binding keys), in the order they arrive;
    from when `Client.watch` returned. Iterating blocks until the next event; with `idle`, the
    iteration ends after that many quiet seconds. `poll()` returns what has come, waiting at
    most its timeout."""

    def __init__(
        self,
        client: Client,
        host: str | None,
        vm: str | None,
        idle: float | None,
        sink: Callable[[Event], None] | None = None,
        keys: list[str] | None = None,
    ) -> None:
        self.client, self.host, self.vm, self.idle = client, host, vm, idle
        self.keys = [topic_re(k) for k in keys or []]
        self._buf: collections.deque[Event] = collections.deque()
        self._sink = sink
        self.closed = False

    def matches(self, ev: Event, routing_key: str | None = None) -> bool:
        if self.keys and not any(k.fullmatch(routing_key or "") for k in self.keys):
            return False
        if self.host and ev.host != self.host and ev.get("source") != f"vmworker://{self.host}":
            return False
        return not (self.vm and ev.get("subject") != self.vm)

    def _feed(self, ev: Event) -> None:
        if self._sink is not None:
            self._sink(ev)
        else:
            self._buf.append(ev)

    def __next__(self) -> Event:
        last = time.monotonic()
        while not self._buf:
            if self.closed:
                raise StopIteration
            if self.idle is not None and time.monotonic() - last > self.idle:
                raise StopIteration
            self.client.poll(0.2)
        return self._buf.popleft()

    def poll(self, timeout: float = 0.2) -> list[Event]:
        if not self._buf:
            self.client.poll(timeout)
        out = list(self._buf)
        self._buf.clear()
        return out

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(ValueError):
            self.client._watches.remove(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def topic_re(key: str) -> re.Pattern[str]:
    """A topic binding key as a pattern of routing keys (`*` one word, `#` any number)."""
    parts = []
    for word in key.split("."):
        parts.append(r"[^.]+" if word == "*" else r".*" if word == "#" else re.escape(word))
    return re.compile(r"\.".join(parts).replace(r".*\.", r"(?:.*\.)?"))
