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
    timed_out: bool


class _HookThreads:
    """Daemon threads that run in-process hooks, kept for the next call: handing a call to a
    waiting thread costs a tenth of starting one, which would cost more than most hooks.
    A thread is handed one call at a time; one whose hook never returns is never handed
    another, so a stuck hook costs its thread and nothing else."""

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


def call_with_timeout(
    func: HookFunc, payload: Any, ctx: HookContext, timeout: float
) -> InprocOutcome:
    """Call the hook in a daemon thread; past the timeout its result is ignored.

    A thread cannot be killed: a hook that never returns keeps its thread, but the
    chain goes on without it.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["result"] = func(payload, ctx)
        except HookFailed as exc:
            box["failed"] = exc
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    _THREADS.submit(target)
    if not done.wait(timeout):
        return InprocOutcome(1, None, f"did not return within {timeout:g}s", True)
    if "failed" in box:
        exc = box["failed"]
        return InprocOutcome(exc.rc, None, str(exc), False)
    if "error" in box:
        exc = box["error"]
        text = "".join(traceback.format_exception(exc))
        return InprocOutcome(1, None, text, False)
    return InprocOutcome(0, box.get("result"), "", False)
