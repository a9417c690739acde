"""Runs one operation: the `before_*` chain, the handler's libvirt call (retried when the error is
transient), then the `after_*` or `after_*_fail` chain. Knows hooks and handlers, not AMQP."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from handlers import Ctx, Operation
from handlers.base import Peers
from handlers.connection import LibvirtConnection
from handlers.errors import OpError
from handlers.libvirt_errors import from_libvirt
from handlers.message import OpMessage
from handlers.operations import OPERATIONS
from worker import launchflags, redact, tracing
from worker.config import Settings
from worker.devicechains import DeviceChains, run_device_chains
from worker.hooks import POINTS, ChainResult, HookEngine

log = structlog.get_logger()


@dataclass
class Outcome:
    """What the terminal event says about a run."""

    ok: bool
    state: str
    duration_ms: float
    attempts: int = 0
    hooks: list[dict[str, Any]] = field(default_factory=list)
    error: OpError | None = None
    noop: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def phase(self) -> str:
        return "after" if self.ok else "fail"

    def event_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attempt": self.attempts,
            "duration_ms": round(self.duration_ms, 3),
            "state": self.state,
            "hooks": self.hooks,
            "noop": self.noop,
        }
        out.update(self.notes)
        if self.error is not None:
            out["error"] = self.error.to_event()
        return out


def check_declarations() -> None:
    """ValueError for a declared operation whose hook point is not a row of the hook table, whose
    payload is not the kind that row hands its scripts, or whose `devices` is not a device
    point (a worker refuses to start)."""
    for name, declared in OPERATIONS.items():
        point = POINTS.get(f"before_{declared.point}")
        if point is None:
            raise ValueError(
                f"operation {name!r}: hook point {declared.point!r} is not in the table"
            )
        if point.payload != declared.payload:
            raise ValueError(
                f"operation {name!r}: hands its hooks {declared.payload}, but {declared.point!r}"
                f" scripts expect {point.payload}"
            )
        devices = POINTS.get(f"before_{declared.devices}") if declared.devices else None
        if declared.devices and (devices is None or devices.payload != "devicexml"):
            raise ValueError(
                f"operation {name!r}: devices {declared.devices!r} is not a device hook point"
            )


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, OpError) and exc.transient


Progress = Callable[[dict[str, Any]], None]


def _no_progress(_data: dict[str, Any]) -> None:
    pass


class Runner:
    def __init__(
        self,
        settings: Settings,
        lv: LibvirtConnection,
        hooks: HookEngine,
        peers: Peers | None = None,
    ) -> None:
        check_declarations()
        self.settings = settings
        self.lv = lv
        self.hooks = hooks
        self.peers = peers
        self.shared: dict[str, Any] = {}  # every run's Ctx.shared (a cancel finds its migration)

    def _ctx(
        self, op: OpMessage, request_id: str, progress: Progress, attempt: int = 1
    ) -> Ctx[OpMessage]:
        return Ctx(
            conn=self.lv.get(),
            op=op,
            storage_roots=self.settings.storage_roots or None,
            allow_raw_xml=self.settings.allow_raw_xml,
            host=self.settings.host,
            request_id=request_id,
            attempt=attempt,
            peers=self.peers,
            progress=progress,
            shared=self.shared,
        )

    def _chain(
        self,
        point: str,
        payload: str,
        op: OpMessage,
        context: dict[str, Any],
        error: str | None = None,
        run: bool = True,
    ) -> ChainResult:
        if not run:  # a chain the op does not run: nothing ran, the payload as it was
            return ChainResult(point, payload, input_payload=payload)
        custom = {**op.custom, **OPERATIONS[op.op].device_custom(op)}
        return self.hooks.run_chain(
            point, payload, vm_id=str(op.vm.uuid), custom=custom, error=error, context=context
        )

    def _flags_readable(self, handler: Operation[Any]) -> bool:
        """Whether a chain `handler`'s operation runs may hold a hook (which could read or
        change the launch-flags file); a missing hook directory is told by one `stat`."""
        bases = [handler.point] + ([handler.devices] if handler.devices else [])
        points = [f"{w}_{b}{tail}" for b in bases for w, tail in _FLAG_CHAINS]
        return self.hooks.may_have_hooks(p for p in points if p in POINTS)

    def _devices(
        self,
        point: str,
        domxml: str,
        op: OpMessage,
        context: dict[str, Any],
        error: str | None = None,
    ) -> DeviceChains:
        """`point`'s chain for each device of `domxml` (nothing at all where it has no hook)."""
        return run_device_chains(
            self.hooks,
            point,
            domxml,
            vm_id=str(op.vm.uuid),
            custom=op.custom,
            context=context,
            error=error,
        )

    def _hooks_event(self, res: ChainResult) -> list[dict[str, Any]]:
        return [{"point": res.point, **h} for h in res.to_event()]

    def _libvirt(self, policy_op: str, fn: Any, done: Any = None, *, step: str) -> int:
        """Call fn() under the op's retry policy; returns the number of attempts. Traced as
        one span `libvirt <step>`, its retries events on it."""
        tr = tracing.active()
        if tr is None:
            return self._attempts(policy_op, fn, done, None)
        span = tr.child(f"libvirt {step}", {"vmworker.libvirt.step": step})
        assert span is not None
        with tracing.current(span):
            try:
                n = self._attempts(policy_op, fn, done, span)
            except OpError as exc:
                span.set_attribute("vmworker.libvirt.attempts", exc.details.get("attempts", 1))
                tr.failed(span, exc.code, exc.message)
                raise
            span.set_attribute("vmworker.libvirt.attempts", n)
            return n

    def _attempts(self, policy_op: str, fn: Any, done: Any, span: Any) -> int:
        """The first attempt is made here; tenacity is engaged only when it fails transiently
        (most calls succeed at once, and a Retrying loop costs about as much as the libvirt
        call). The failed first attempt is then tenacity's first: the same waits, logs, stop
        rules and attempt numbers as if tenacity had made it."""
        started = time.monotonic()
        try:
            try:
                fn()
                return 1
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc) from None
        except OpError as exc:
            if not exc.transient:
                exc.details["attempts"] = 1
                raise
            first = exc
        return self._retry(policy_op, fn, done, span, first, started)

    def _retry(
        self, policy_op: str, fn: Any, done: Any, span: Any, first: OpError, started: float
    ) -> int:
        policy = self.settings.retry_policy(policy_op)
        spent = time.monotonic() - started  # the first attempt counts against the deadline

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, OpError) and exc.details.get("connection_lost"):
                self.lv.reset()
            log.warning(
                "libvirt.retrying",
                attempt=state.attempt_number,
                error=str(exc),
                sleep_s=round(state.upcoming_sleep, 3),
            )
            if span is not None:
                span.add_event(
                    "retry",
                    {
                        "vmworker.retry.attempt": state.attempt_number,
                        "vmworker.retry.sleep_s": round(state.upcoming_sleep, 3),
                        "error.type": exc.code if isinstance(exc, OpError) else "internal",
                        "exception.message": str(exc)[:500],
                    },
                )

        retrying = Retrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(policy.attempts)
            | stop_after_delay(max(policy.deadline_s - spent, 0.0)),
            wait=wait_exponential_jitter(
                multiplier=policy.initial_s, max=policy.max_backoff_s, jitter=policy.initial_s
            ),
            before_sleep=before_sleep,
            reraise=True,
        )
        n = 0
        try:
            for attempt in retrying:
                with attempt:
                    n += 1
                    if n == 1:
                        raise first  # made by _attempts
                    try:
                        if done is not None and done():
                            break  # the failed attempt had taken effect after all
                        fn()
                    except libvirt.libvirtError as exc:
                        raise from_libvirt(exc) from None
        except OpError as exc:
            exc.details["attempts"] = n
            raise
        return n

    def _retried(self, op: str, fn: Any, done: Any = None, *, step: str) -> tuple[Any, int]:
        """fn() under the op's retry policy: (its result, attempts made)."""
        out: list[Any] = [None]
        n = self._libvirt(op, lambda: out.__setitem__(0, fn()), done=done, step=step)
        return out[0], n

    def run(
        self,
        op: OpMessage,
        *,
        request_id: str,
        context: dict[str, Any] | None = None,
        progress: Progress = _no_progress,
    ) -> Outcome:
        """Run `op` (a parsed operation message) to its outcome. Never raises. The chains run
        are those its declaration names (`Operation.chains`). Its secrets are scrubbed from the
        outcome (hooks' output, error, notes) and from every log line of the run."""
        secrets = _secrets(op)
        flags_dir = self.hooks.state_dir if OPERATIONS[op.op].launch_flags else None
        with redact.holding(secrets):
            try:
                out = self._run(op, request_id=request_id, context=context, progress=progress)
            finally:  # after every chain of the run, as VDSM removes it after after_vm_start
                if flags_dir is not None:
                    launchflags.remove(flags_dir, str(op.vm.uuid))
        if secrets:
            out.hooks = redact.scrub(out.hooks, secrets)
            out.notes = redact.scrub(out.notes, secrets)
            if out.error is not None:
                out.error.message = redact.scrub(out.error.message, secrets)
                out.error.details = redact.scrub(out.error.details, secrets)
        return out

    def _run(
        self,
        op: OpMessage,
        *,
        request_id: str,
        context: dict[str, Any] | None = None,
        progress: Progress = _no_progress,
    ) -> Outcome:
        t0 = time.monotonic()
        handler: Operation[Any] = OPERATIONS[op.op]
        context = {"op": op.op, "request_id": request_id, **(context or {})}
        hooks: list[dict[str, Any]] = []
        payload = f"<domain><uuid>{op.vm.uuid}</uuid></domain>"
        ctx: Ctx[OpMessage] | None = None
        attempts = 1
        try:
            # libvirtd being away at the start counts as attempts of this op, too
            run_no = int(context.get("attempt", 1))
            ctx, opened = self._retried(
                op.op, lambda: self._ctx(op, request_id, progress, attempt=run_no), step="connect"
            )
            assert ctx is not None
            flags_dir = self.hooks.state_dir if handler.launch_flags else None
            vm_id = str(op.vm.uuid)
            if flags_dir is not None and context.get("attempt", 1) > 1:
                # a recovered run: the flags its first run's hooks left judge whether it is done
                ctx.launch_flags = launchflags.load(flags_dir, vm_id)
            done, _ = self._retried(op.op, lambda: handler.done(ctx), step="done")
            if done:
                notes = dict(ctx.notes)  # what `done` found (a stale file it removed, ...)
                return Outcome(True, ctx.state(), _ms(t0), opened, noop=True, notes=notes)
            payload = handler.prepare(ctx)
            runs = handler.chains
            if flags_dir is not None and handler.launch_flags:  # as VDSM: before every chain
                if self._flags_readable(handler):
                    launchflags.dump(flags_dir, vm_id, handler.launch_flags(ctx))
                else:  # no hook of this op could read or change the file: what it would hold
                    ctx.launch_flags = handler.launch_flags(ctx)
                    flags_dir = None
            if handler.devices and "before" in runs:  # as VDSM: the devices' chains first
                devices = self._devices(f"before_{handler.devices}", payload, op, context)
                hooks += devices.hooks
                if POINTS[devices.point].aborts:
                    payload = devices.payload
                    if (failed := devices.error()) is not None:
                        raise failed
            before = self._chain(
                f"before_{handler.point}", payload, op, context, run="before" in runs
            )
            hooks += self._hooks_event(before)
            payload = before.payload  # the fail chain, too, sees the last good payload
            if before.failed:
                first = before.first_failure
                raise OpError(
                    "hook_failed",
                    f"before_{handler.point}: {first.name if first else '?'} failed"
                    f" (rc={first.rc if first else '?'})",
                    "hook",
                    hook=first.name if first else None,
                    details={"stderr": before.failure_stderr()},
                )
            if flags_dir is not None:  # what the hooks left there is what libvirt gets
                ctx.launch_flags = launchflags.load(flags_dir, vm_id)

            def call() -> None:
                ctx.conn = self.lv.get()
                handler.execute(ctx, payload)

            def took_effect() -> bool:  # after a failed attempt, on a live connection
                ctx.conn = self.lv.get()
                return bool(handler.done(ctx))

            _, calls = self._retried(op.op, call, done=took_effect, step=op.op)
            attempts = opened - 1 + calls
            state = ctx.state()
            after_payload = (
                payload
                if handler.payload == "devicexml" or state == "undefined"
                else _safe_xml(ctx, payload)
            )
            after = self._chain(
                f"after_{handler.point}", after_payload, op, context, run="after" in handler.chains
            )
            hooks += self._hooks_event(after)
            if handler.devices and "after" in handler.chains:
                hooks += self._devices(f"after_{handler.devices}", after_payload, op, context).hooks
            return Outcome(True, state, _ms(t0), attempts, hooks, notes=dict(ctx.notes))
        except OpError as exc:
            err = exc
            attempts = max(attempts, err.details.pop("attempts", 1))
        except libvirt.libvirtError as exc:
            err = from_libvirt(exc)
        except Exception as exc:  # a bug must still end in a fail event, not a stuck message
            log.exception("op.crashed")
            err = OpError("internal", f"{type(exc).__name__}: {exc}", "internal")
        error = redact.scrub(str(err), _secrets(op))  # into the hooks' environment
        fail = self._chain(
            f"after_{handler.point}_fail",
            payload,
            op,
            context,
            error=error,
            run="after_fail" in handler.chains,
        )
        hooks += self._hooks_event(fail)
        if handler.devices and "after_fail" in handler.chains:
            point = f"after_{handler.devices}_fail"
            hooks += self._devices(point, payload, op, context, error=str(err)).hooks
        state = "unknown"
        if ctx is not None:
            with contextlib.suppress(libvirt.libvirtError):
                state = ctx.state()
        notes = dict(ctx.notes) if ctx is not None else {}
        return Outcome(False, state, _ms(t0), attempts, hooks, err, notes=notes)


# (when, suffix) of each chain around an operation that could see its launch-flags file
_FLAG_CHAINS = (("before", ""), ("after", ""), ("after", "_fail"))


def _secrets(op: OpMessage) -> list[str]:
    """The op's secrets; a stand-in for a message (a test's) has none."""
    return op.secrets() if isinstance(op, OpMessage) else []


def _safe_xml(ctx: Ctx[OpMessage], fallback: str) -> str:
    try:
        return ctx.current_xml()
    except (OpError, libvirt.libvirtError):
        return fallback


def _ms(t0: float) -> float:
    return (time.monotonic() - t0) * 1000.0
