"""State events: what libvirt reports about domains, published as `<host>.state.<state>`.

The control plane never asks a host anything, so a guest powering itself off, a QEMU crash or a
domain started with virsh must reach it as an event. libvirt's default event loop runs in a
thread of its own (one per process, started on first use); the lifecycle callback only queues
what it saw, and this module's own thread turns it into a CloudEvent and hands it to the
journal's outbox (`sink`), which the connection thread publishes.

Changes the worker itself causes are not published twice (the operation's `before`/`after`
events already say them): while an operation runs on a VM, and for `grace_s` after it ends, the
VM is *owned* by that request (`Ownership`). An event for an owned VM whose state is one the
operation is expected to produce (its declaration's `expects`) is suppressed; any other state
seen in that window (a crash above all) is published, with `data.during_request` set to the
request id.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import libvirt
import structlog

import handlers.connection  # noqa: F401  (silences libvirt's printing of every error)
from handlers.base import STATE_NAMES, UNDEFINED
from handlers.operations import OPERATIONS
from worker import events

log = structlog.get_logger()

# libvirt lifecycle event -> (our state word, prefix of its detail constants)
_EVENT_KINDS: dict[int, tuple[str, str]] = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: ("defined", "DEFINED"),
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: ("undefined", "UNDEFINED"),
    libvirt.VIR_DOMAIN_EVENT_STARTED: ("started", "STARTED"),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: ("paused", "SUSPENDED"),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: ("resumed", "RESUMED"),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: ("stopped", "STOPPED"),
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: ("shutdown", "SHUTDOWN"),
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: ("pmsuspended", "PMSUSPENDED"),
    libvirt.VIR_DOMAIN_EVENT_CRASHED: ("crashed", "CRASHED"),
}


def _details(prefix: str) -> dict[int, str]:
    """VIR_DOMAIN_EVENT_<prefix>_<WORD> constants of this libvirt-python, as {code: word}."""
    start = f"VIR_DOMAIN_EVENT_{prefix}_"
    return {
        int(getattr(libvirt, name)): name[len(start) :].lower()
        for name in dir(libvirt)
        if name.startswith(start) and not name.endswith("_LAST")
    }


_DETAILS = {event: _details(prefix) for event, (_, prefix) in _EVENT_KINDS.items()}
# a stop libvirt did not ask for: the guest crashed, or QEMU died under it
_CRASH_STOPS = {"crashed", "failed"}


def describe(event: int, detail: int) -> tuple[str, str]:
    """(state, reason) words for a libvirt lifecycle event: (5, 1) -> ("stopped", "destroyed").
    A stop whose detail is `crashed` or `failed` (QEMU died) is the state `crashed`."""
    state, _ = _EVENT_KINDS.get(event, (f"event{event}", ""))
    reason = _DETAILS.get(event, {}).get(detail, f"detail{detail}")
    if state == "stopped" and reason in _CRASH_STOPS:
        state = "crashed"
    return state, reason


# Any state but a crash: what an op that is not declared (or not yet known) may cause.
_ANY_BUT_CRASH = frozenset(
    {"defined", "undefined", "started", "paused", "resumed", "stopped", "shutdown", "pmsuspended"}
)


def expected_states(op: str) -> frozenset[str]:
    """The state words `op`'s own libvirt calls produce (its declaration's `expects`). Anything
    else seen while the operation owns its VM is not its doing and is published."""
    declared = OPERATIONS.get(op)
    return frozenset(declared.expects) if declared is not None else _ANY_BUT_CRASH


@dataclass
class _Claim:
    request_id: str
    op: str
    since: float
    until: float | None = None  # None while the operation runs


@dataclass(frozen=True)
class Verdict:
    """What to do with one state event: drop it, or publish it (noting a request in progress)."""

    suppress: bool
    request_id: str | None = None


class Ownership:
    """Which VMs the worker's own operations are changing right now (thread-safe).

    The service calls `acquire` when an operation starts on a VM and `release` when it ends;
    libvirt's events arrive a little after the calls that caused them, so the claim lasts
    `grace_s` more. `judge` is asked, with the time an event was received, whether to publish it.
    The last few claims of a VM are kept, so an event read after the VM's next operation began is
    still judged against the operation that was running when it came.
    """

    KEEP = 8  # claims kept per VM

    def __init__(self, grace_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self.clock = clock
        self._claims: dict[str, list[_Claim]] = {}  # per VM, oldest first
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def acquire(self, vm: str, request_id: str, op: str) -> None:
        now = self.clock()
        with self._lock:
            claims = self._claims.setdefault(vm, [])
            claims.append(_Claim(request_id, op, now))
            del claims[: -self.KEEP]
            # forget claims long over (kept a while: an event may be read late); a sweep
            # reads every claim, so at most one every 10 s, not one per operation
            if now >= self._next_sweep:
                self._next_sweep = now + 10.0
                for key in list(self._claims):
                    left = [c for c in self._claims[key] if not (c.until and c.until < now - 300)]
                    if left:
                        self._claims[key] = left
                    else:
                        del self._claims[key]

    def release(self, vm: str, request_id: str, hold_s: float = 0.0) -> None:
        """The operation ended; its claim lasts `grace_s` more, or `hold_s` if longer (the
        destination's part of a migration: the VM arrives after `prepare_incoming` ends)."""
        with self._lock:
            for claim in reversed(self._claims.get(vm, ())):
                if claim.request_id == request_id:
                    if claim.until is None:
                        claim.until = self.clock() + max(self.grace_s, hold_s)
                    return

    def end(self, vm: str) -> None:
        """Every claim on `vm` ends within `grace_s` (a held one when its migration is over)."""
        with self._lock:
            latest = self.clock() + self.grace_s
            for claim in self._claims.get(vm, ()):
                if claim.until is None or claim.until > latest:
                    claim.until = latest

    def owner(self, vm: str, at: float | None = None) -> _Claim | None:
        """The claim on `vm` at time `at` (now by default), if any: the newest one that had
        begun by then and was not over."""
        at = self.clock() if at is None else at
        with self._lock:
            for claim in reversed(self._claims.get(vm, ())):
                if claim.since <= at and (claim.until is None or at <= claim.until):
                    return claim
            return None

    def judge(self, vm: str, state: str, at: float | None = None) -> Verdict:
        claim = self.owner(vm, at)
        if claim is None:
            return Verdict(False)
        if state in expected_states(claim.op):
            return Verdict(True, claim.request_id)
        return Verdict(False, claim.request_id)


class StateCounter(Protocol):
    def state_event(self, state: str, published: bool) -> None: ...


# -- libvirt's event loop: one per process ------------------------------------------------------
_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Register libvirt's default event loop implementation and run it in a daemon thread.

    Process-wide and idempotent: libvirt allows one implementation per process, and the thread
    lives as long as the process. Connections opened after this get keepalives and events."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:  # never let the loop die; log and go on
                    log.exception("libvirt.event_loop_failed")
                    time.sleep(0.1)

        _loop_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _loop_thread.start()


@dataclass
class _Seen:
    at: float
    uuid: str
    name: str
    event: int
    detail: int


class DomainEvents:
    """Subscribes to lifecycle events of every domain on `uri` and publishes state events.

    `sink(routing_key, event)` queues an event (the journal's `enqueue`). The subscription is
    re-made whenever the connection drops (close callback, keepalive or a failed liveness check);
    on reconnect, domains whose state changed while nobody listened get one event each with the
    reason `missed`.
    """

    def __init__(
        self,
        uri: str,
        host: str,
        sink: Callable[[str, dict[str, Any]], Any],
        *,
        ownership: Ownership | None = None,
        counter: StateCounter | None = None,
        reconnect_max_s: float = 10.0,
        batch_s: float = 0.05,
    ) -> None:
        self.uri = uri
        self.host = host
        self.sink = sink
        self.ownership = ownership or Ownership()
        self.counter = counter
        self.reconnect_max_s = reconnect_max_s
        self.batch_s = batch_s
        self.connected = threading.Event()
        self.connects = 0
        self._seen: queue.Queue[_Seen] = queue.Queue()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._conn: libvirt.virConnect | None = None
        self._cb_id: int | None = None
        self._known: dict[str, tuple[str, str]] = {}  # uuid -> (name, domain state)
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, wait_s: float = 5.0) -> DomainEvents:
        """Subscribe in a thread of its own; wait up to `wait_s` for the first subscription, so
        that what happens once the worker consumes is seen (libvirtd away: retried meanwhile)."""
        ensure_event_loop()
        self._thread = threading.Thread(target=self._run, name="domevents", daemon=True)
        self._thread.start()
        self.connected.wait(wait_s)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening; events already received are published first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._disconnect()

    # -- the domevents thread ------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.5
        last_check = time.monotonic()
        while True:
            if self._stop.is_set():
                self._drain()
                return
            if self._conn is None or self._lost.is_set():
                self._disconnect()
                try:
                    self._connect()
                    backoff = 0.5
                except libvirt.libvirtError as exc:
                    log.warning(
                        "libvirt.events_unavailable",
                        uri=self.uri,
                        error=str(exc),
                        retry_in_s=backoff,
                    )
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.reconnect_max_s)
                    continue
            with contextlib.suppress(queue.Empty):
                first = self._seen.get(timeout=0.2)
                # what else comes within `batch_s` is handled with it: one wake-up of this
                # thread and one state lookup per domain for a burst, not one per event
                self._stop.wait(self.batch_s)
                self._handle([first, *self._take()])
            if time.monotonic() - last_check > 2.0:
                last_check = time.monotonic()
                self._check_alive()

    def _connect(self) -> None:
        conn = libvirt.openReadOnly(self.uri)
        try:
            conn.registerCloseCallback(self._on_close, None)
            # drivers without a daemon (test:///) have no keepalive
            with contextlib.suppress(libvirt.libvirtError):
                conn.setKeepAlive(5, 3)
            self._cb_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            )
        except libvirt.libvirtError:
            conn.close()
            raise
        self._conn = conn
        self._lost.clear()
        self.connects += 1
        self._reconcile(first=self.connects == 1)
        self.connected.set()
        log.info("libvirt.events_subscribed", uri=self.uri, connects=self.connects)

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self.connected.clear()
        if conn is None:
            return
        if self._cb_id is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(self._cb_id)
            self._cb_id = None
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def _check_alive(self) -> None:
        conn = self._conn
        try:
            alive = conn is not None and conn.isAlive() == 1
        except libvirt.libvirtError:
            alive = False
        if not alive and not self._lost.is_set():
            log.warning("libvirt.events_dead", uri=self.uri)
            self._lost.set()

    def _take(self) -> list[_Seen]:
        out: list[_Seen] = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self._seen.get_nowait())
        return out

    def _drain(self) -> None:
        self._handle(self._take())

    # -- callbacks (libvirt's event loop thread: record and return) ------------------------
    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        try:
            self._seen.put(_Seen(time.monotonic(), dom.UUIDString(), dom.name(), event, detail))
        except Exception:  # a callback must never raise into libvirt
            log.exception("libvirt.events_callback_failed")

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        log.warning("libvirt.events_closed", uri=self.uri, reason=reason)
        self._lost.set()

    # -- turning what libvirt said into events ---------------------------------------------
    def _domain_state(self, uuid: str) -> str:
        if self._conn is None:
            return "unknown"
        try:
            dom = self._conn.lookupByUUIDString(uuid)
            return STATE_NAMES.get(dom.state()[0], "unknown")
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return UNDEFINED
            return "unknown"

    def _handle(self, batch: list[_Seen]) -> None:
        """Publish each event in order; `domain_state` is what libvirt says once the batch is
        taken (looked up once per domain): the state the domain is in now."""
        states: dict[str, str] = {}
        for seen in batch:
            if seen.uuid not in states:
                states[seen.uuid] = self._domain_state(seen.uuid)
            self._handle_one(seen, states[seen.uuid])

    def _handle_one(self, seen: _Seen, dom_state: str) -> None:
        state, reason = describe(seen.event, seen.detail)
        if dom_state == UNDEFINED:
            self._known.pop(seen.uuid, None)
        else:
            self._known[seen.uuid] = (seen.name, dom_state)
        self._publish(
            seen.uuid,
            seen.name,
            state,
            reason,
            dom_state,
            seen.at,
            {"event": seen.event, "detail": seen.detail},
        )

    def _publish(
        self,
        uuid: str,
        name: str,
        state: str,
        reason: str,
        dom_state: str,
        at: float,
        raw: dict[str, int] | None,
    ) -> None:
        verdict = self.ownership.judge(uuid, state, at)
        if self.counter is not None:
            self.counter.state_event(state, not verdict.suppress)
        if verdict.suppress:  # counted above; not logged: every operation has some
            return
        data: dict[str, Any] = {
            "host": self.host,
            "vm": {"uuid": uuid, "name": name},
            "state": state,
            "reason": reason,
            "domain_state": dom_state,
        }
        if raw is not None:
            data["libvirt_event"] = raw
        if verdict.request_id:
            data["during_request"] = verdict.request_id
        ev = events.cloud_event(
            self.host, ("state", state), subject=uuid, request_id=None, data=data
        )
        log.info("state.changed", vm=uuid, name=name, state=state, reason=reason)
        self.sink(events.routing_key(self.host, "state", state), ev)

    def _reconcile(self, *, first: bool) -> None:
        """Snapshot every domain's state; after a reconnect, report what changed meanwhile."""
        assert self._conn is not None
        now: dict[str, tuple[str, str]] = {}
        for dom in self._conn.listAllDomains(0):
            try:
                now[dom.UUIDString()] = (dom.name(), STATE_NAMES.get(dom.state()[0], "unknown"))
            except libvirt.libvirtError:
                continue  # gone while listing
        before, self._known = self._known, now
        if first:
            return
        at = time.monotonic()
        for uuid, (name, state) in now.items():
            old = before.get(uuid)
            if old is None:
                self._publish(uuid, name, "defined", "missed", state, at, None)
            elif old[1] != state:
                self._publish(uuid, name, _state_event_of(old[1], state), "missed", state, at, None)
        for uuid, (name, _) in before.items():
            if uuid not in now:
                self._publish(uuid, name, "undefined", "missed", UNDEFINED, at, None)


def _state_event_of(old: str, new: str) -> str:
    """The state word for a domain that went from `old` to `new` while nobody listened."""
    if new in ("running", "blocked"):
        return "resumed" if old == "paused" else "started"
    return {
        "paused": "paused",
        "shutoff": "stopped",
        "crashed": "crashed",
        "pmsuspended": "pmsuspended",
        "shutdown": "shutdown",
    }.get(new, new)
