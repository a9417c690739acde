"""In-process hooks: Python callables registered under the entry-point group `vmworker.hooks`.

An entry point named `<point>:<name>` (e.g. `before_vm_start:60_numa = mypkg.hooks:numa`)
joins the chain of `<point>`, ordered with the scripts by `<name>`. The callable gets the
payload parsed (an lxml ElementTree for XML points, the decoded JSON for JSON points) and a
`HookContext`, and returns the new payload, or None after editing it in place. It fails by
raising: `HookFailed(msg, rc=2)` stops the chain like a script's exit 2; any other exception
counts as rc 1.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from worker.hooks.points import POINTS

GROUP = "vmworker.hooks"
log = structlog.get_logger(__name__)

HookFunc = Callable[[Any, "HookContext"], Any]


class HookFailed(Exception):
    """Raised by an in-process hook to fail with a message; rc=2 stops the chain."""

    def __init__(self, message: str, rc: int = 1) -> None:
        super().__init__(message)
        self.rc = rc


@dataclass(frozen=True)
class HookContext:
    """What an in-process hook knows besides the payload."""

    point: str
    vm_id: str
    custom: Mapping[str, str]
    error: str | None
    context: Mapping[str, Any]
    log: Any = field(repr=False, default=None)


@dataclass
class InprocHook:
    """One registered callable; loaded on first use, a load error refuses it."""

    point: str
    name: str
    value: str
    entry_point: importlib.metadata.EntryPoint | None = field(repr=False, default=None)
    func: HookFunc | None = field(repr=False, default=None)
    sha256: str | None = None
    refused: str | None = None

    def load(self) -> None:
        if self.func is not None or self.refused is not None or self.entry_point is None:
            return
        try:
            func = self.entry_point.load()
        except Exception as exc:
            self.refused = f"cannot load {self.value}: {type(exc).__name__}: {exc}"
            return
        if not callable(func):
            self.refused = f"{self.value} is not callable"
            return
        self.func = func
        self.sha256 = _module_sha256(self.entry_point.module)


def _module_sha256(module: str) -> str | None:
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None)
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def discover_inproc(group: str = GROUP) -> dict[str, list[InprocHook]]:
    """point -> its in-process hooks, loaded. Badly named entry points are logged and skipped."""
    found: dict[str, list[InprocHook]] = {}
    seen: set[tuple[str, str]] = set()
    for ep in importlib.metadata.entry_points(group=group):
        point, sep, name = ep.name.partition(":")
        if not sep or not name or point not in POINTS or "/" in name:
            log.warning(
                "hook.inproc.bad_name",
                entry_point=ep.name,
                value=ep.value,
                expected="<hook point>:<name>",
            )
            continue
        if (point, name) in seen:  # the same distribution seen twice on sys.path
            continue
        seen.add((point, name))
        hook = InprocHook(point=point, name=name, value=ep.value, entry_point=ep)
        hook.load()
        found.setdefault(point, []).append(hook)
    return found


@dataclass(frozen=True)
class InprocOutcome:
    rc: int
    result: Any
    stderr: str


class _HookThreads:
    """Daemon threads that run in-process hooks, kept for the next call: handing work to a
    waiting thread costs a tenth of starting one, which would cost more than most hooks.
    A thread is handed one piece of work at a time (a run of hooks); one whose hook never
    returns is never handed another, so a stuck hook costs its thread and nothing else."""

    def __init__(self) -> None:
        self._idle: list[queue.SimpleQueue[Callable[[], None]]] = []
        self._lock = threading.Lock()

    def submit(self, call: Callable[[], None]) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name="hook", daemon=True).start()
        inbox.put(call)

    def _serve(self, inbox: queue.SimpleQueue[Callable[[], None]]) -> None:
        while True:
            inbox.get()()
            with self._lock:
                self._idle.append(inbox)


_THREADS = _HookThreads()


class Abandoned(BaseException):
    """Raised in a hook thread whose run was given up: it must record nothing more."""


class HookRun:
    """Consecutive in-process hooks handed to one hook thread at once, each with its own
    timeout.

    The hook thread runs `body(run)`, which calls each hook through `run.call` and hands
    each outcome back through `run.record`. The waiting caller (`run.wait`) knows which
    hook call is under way since when; when one overruns the timeout it abandons the run:
    from then on `call` and `record` raise `Abandoned` in the hook thread, so nothing the
    late hook does reaches `results`, and no further hook of the run is called.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.results: list[Any] = []
        self.abandoned = False
        self.error: BaseException | None = None
        self._since: float | None = None  # monotonic start of the hook call under way
        self._lock = threading.Lock()
        self._done = threading.Lock()
        self._done.acquire()

    def start(self, body: Callable[[HookRun], None]) -> None:
        """Hand `body` to a hook thread."""

        def target() -> None:
            try:
                body(self)
            except Abandoned:
                pass
            except BaseException as exc:  # a fault of the engine, not of a hook
                self.error = exc
            finally:
                self._done.release()

        _THREADS.submit(target)

    def call(self, func: HookFunc, payload: Any, ctx: HookContext) -> InprocOutcome:
        """In the hook thread: call one hook, under the timeout."""
        if self.abandoned:
            raise Abandoned
        self._since = time.monotonic()
        try:
            out = InprocOutcome(0, func(payload, ctx), "")
        except HookFailed as exc:
            out = InprocOutcome(exc.rc, None, str(exc))
        except BaseException as exc:
            out = InprocOutcome(1, None, "".join(traceback.format_exception(exc)))
        with self._lock:
            if self.abandoned:
                raise Abandoned
            self._since = None
        return out

    def record(self, item: Any) -> None:
        """In the hook thread: hand one hook's outcome to the caller."""
        with self._lock:
            if self.abandoned:
                raise Abandoned
            self.results.append(item)

    def wait(self) -> float | None:
        """In the caller: None once the body is done; else the run was abandoned because the
        hook call under way (the one after `results`) overran the timeout, and this is how
        long it had run, in seconds.

        Re-raises whatever the body raised other than through a hook.
        """
        while True:
            since = self._since
            if since is None:  # between hook calls: they are bounded, check back anyway
                remaining = max(self.timeout, 0.01)
            else:
                remaining = since + self.timeout - time.monotonic()
            if remaining > 0 and self._done.acquire(timeout=min(remaining, threading.TIMEOUT_MAX)):
                if self.error is not None:
                    raise self.error
                return None
            with self._lock:
                since = self._since
                if since is not None:
                    elapsed = time.monotonic() - since
                    if elapsed >= self.timeout:
                        self.abandoned = True
                        return elapsed
