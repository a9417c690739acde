"""The hook chain: run a point's scripts and in-process hooks in name order over one payload.

Like a structlog processor chain, a hook chain is a list of steps and running it is a for
loop: each step gets the last good payload and may hand back a new one. What VDSM does is
kept (temp file, env, rc 0/1/2); what it lacks is added (timeouts, edit validation, every
failure's stderr, checksums, refusal of insecure scripts).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from threading import Lock
from typing import Any

import structlog
from lxml import etree

from worker import tracing
from worker.hooks.custom import validate_custom
from worker.hooks.inproc import (
    GROUP,
    HookContext,
    HookRun,
    InprocHook,
    discover_inproc,
)
from worker.hooks.payload import Payload, judge, restore, serialize
from worker.hooks.points import POINTS, HookPoint, get_point
from worker.hooks.prewarm import ForkServerRunner
from worker.hooks.results import ChainResult, Kind, ScriptResult
from worker.hooks.runner import Completed, ProcessRunner, Runner
from worker.hooks.scripts import Script, all_absent, check_root, discover, has_entries
from worker.logs import tail as log_tail

HOOKLIB = Path(__file__).resolve().parent.parent / "hooklib"
# context keys also exported to scripts, as `_hook_<key>`
CONTEXT_ENV_KEYS = ("op", "request_id", "correlation_id", "host", "attempt")

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Step:
    name: str
    kind: Kind
    sha256: str | None
    refused: str | None
    script: Script | None = None
    hook: InprocHook | None = None


def _clean(value: str) -> str:
    return value.replace("\0", "")


PAYLOAD_PREFIX = "vmworker-"


def _fresh_payload_dir(path: Path) -> Path:
    """`path` made (mode 0700) and emptied of payload files a killed worker left: one worker per
    state directory (the journal's lock), so none of them is in use."""
    path = Path(os.path.abspath(path))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # the domain's XML: nobody else's to read
    for left in path.glob(f"{PAYLOAD_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            left.unlink()
    return path


class HookEngine:
    """Runs hook chains from a hooks root. Thread-safe: chains of different VMs may overlap.

    HookRootError if the root is missing, not a directory or unreadable: no engine runs
    without the site's hooks. A relative root is made absolute here, once.
    """

    def __init__(
        self,
        root: Path,
        *,
        timeout: float = 30.0,
        output_limit: int = 4096,
        inproc: bool = True,
        prewarm: bool = False,
        runner: Runner | None = None,
        entry_point_group: str = GROUP,
        state_dir: Path | None = None,
        payload_dir: Path | None = None,
    ) -> None:
        self.root = check_root(Path(root))
        # per-VM files scripts keep between chains (VDSM's launch flags): `_hook_state_dir`
        self.state_dir = Path(os.path.abspath(state_dir)) if state_dir is not None else None
        # where chains' payload files are written (None: the system's temp directory); the
        # worker gives one of its own, and what a killed worker left there goes now
        self.payload_dir = _fresh_payload_dir(payload_dir) if payload_dir is not None else None
        self.timeout = timeout
        self.output_limit = output_limit
        self.inproc = inproc
        self.prewarm = prewarm
        self.entry_point_group = entry_point_group
        self.runner: Runner = runner if runner is not None else self._default_runner(prewarm)
        self._inproc_hooks: dict[str, list[InprocHook]] | None = None
        self._inproc_step_lists: dict[str, list[_Step]] | None = None
        self._lock = Lock()

    @staticmethod
    def _default_runner(prewarm: bool) -> Runner:
        if prewarm:
            return ForkServerRunner(ProcessRunner())
        return ProcessRunner()

    def close(self) -> None:
        """Stop the runner's helper processes (the fork servers of `prewarm=True`), if any."""
        close = getattr(self.runner, "close", None)
        if callable(close):
            close()

    # --- discovery -----------------------------------------------------------------------

    def inproc_hooks(self) -> dict[str, list[InprocHook]]:
        """point -> in-process hooks, scanned once per engine."""
        if not self.inproc:
            return {}
        with self._lock:
            if self._inproc_hooks is None:
                self._inproc_hooks = discover_inproc(self.entry_point_group)
            return self._inproc_hooks

    def steps(self, point: str) -> list[_Step]:
        """The chain of `point` as it would run now: scripts and in-process hooks by name."""
        get_point(point)
        steps = [
            _Step(s.name, "script", s.sha256, s.refused, script=s)
            for s in discover(self.root, point)
        ]
        steps += self._inproc_steps().get(point, ())
        steps.sort(key=lambda s: (s.name, s.kind))
        return steps

    def has_hooks(self, point: str) -> bool:
        """Whether `point`'s chain may have a step: one directory listing, nothing hashed,
        parsed or started (what a caller checks before building a payload nobody reads)."""
        get_point(point)
        return bool(self._inproc_steps().get(point)) or has_entries(self.root, point)

    def may_have_hooks(self, points: Iterable[str]) -> bool:
        """Whether any of `points`' chains may have a step (`has_hooks` of each; one `stat`
        of the root when none of their directories is there)."""
        points = list(points)
        steps = self._inproc_steps()
        if any(steps.get(p) for p in points):
            return True
        return not all_absent(self.root, points) and any(has_entries(self.root, p) for p in points)

    def _inproc_steps(self) -> dict[str, list[_Step]]:
        """point -> the steps of its in-process hooks (made once, as the hooks are found)."""
        if not self.inproc:
            return {}
        steps = self._inproc_step_lists
        if steps is None:
            steps = {
                point: [_Step(h.name, "inproc", h.sha256, h.refused, hook=h) for h in hooks]
                for point, hooks in self.inproc_hooks().items()
            }
            self._inproc_step_lists = steps
        return steps

    def inventory(self) -> dict[str, list[dict[str, Any]]]:
        """point -> [{name, sha256, kind, refused}] for every point that has any hook."""
        inv: dict[str, list[dict[str, Any]]] = {}
        for point in POINTS:
            steps = self.steps(point)
            if steps:
                inv[point] = [
                    {"name": s.name, "sha256": s.sha256, "kind": s.kind, "refused": s.refused}
                    for s in steps
                ]
        return inv

    # --- running -------------------------------------------------------------------------

    def script_env(
        self,
        point: HookPoint,
        payload_path: str,
        *,
        vm_id: str,
        custom: Mapping[str, str],
        error: str | None,
        context: Mapping[str, Any],
    ) -> dict[str, str]:
        """The environment of every script of a chain (VDSM's, plus `_hook_*` extras)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("_hook_")}
        env.update(custom)
        env["vmId"] = vm_id
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([*paths, str(HOOKLIB)])
        env[point.env_var] = payload_path
        env["_hook_point"] = point.name
        if self.state_dir is not None:
            env["_hook_state_dir"] = str(self.state_dir)
        if error is not None:
            env["_hook_error"] = _clean(error)
        for key in CONTEXT_ENV_KEYS:
            value = context.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                env[f"_hook_{key}"] = _clean(str(value))
        return env

    def run_chain(
        self,
        point: str,
        payload: str,
        *,
        vm_id: str,
        custom: Mapping[str, str] | None = None,
        error: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> ChainResult:
        """Run every hook of `point` over `payload`; never raises for a hook's fault.

        ValueError for an unknown or path-like point, CustomPropertyError for a bad
        custom property.
        """
        hp = get_point(point)
        custom = dict(custom or {})
        context = dict(context or {})
        validate_custom(custom)
        if not isinstance(vm_id, str) or "\0" in vm_id:
            raise ValueError(f"invalid vm_id {vm_id!r}")
        if not isinstance(payload, str):
            payload = json.dumps(payload) if not hp.is_xml else str(payload)
        result = ChainResult(point=point, payload=payload, input_payload=payload)
        steps = self.steps(point)
        if not steps:
            return result

        original = payload.encode("utf-8")
        clog = log.bind(point=point, vm_id=vm_id)
        ctx = HookContext(
            point=point, vm_id=vm_id, custom=custom, error=error, context=context, log=clog
        )
        good = Payload(original)
        trace = tracing.active()  # None unless tracing records this thread's request
        # the payload file and the scripts' environment: made for the first script that runs
        path: str | None = None
        in_file = b""  # what the payload file holds
        env: dict[str, str] = {}
        try:
            i = 0
            while i < len(steps):
                step = steps[i]
                t0 = tracing.now_ns() if trace is not None else 0
                if step.kind == "script" and not step.refused:
                    if path is None:
                        path = self._payload_file(hp, point, good.data)
                        in_file = good.data
                        env = self.script_env(
                            hp, path, vm_id=vm_id, custom=custom, error=error, context=context
                        )
                    elif in_file != good.data:
                        restore(path, good.data)
                    res, good = self._run_script(hp, step, path, env, good)
                    in_file = good.data  # _run_script leaves the last good payload in the file
                    self._log(clog, res)
                    ran = [res]
                    i += 1
                elif step.kind == "script":
                    ran = [self._refused(step)]
                    self._log(clog, ran[0])
                    i += 1
                else:
                    j = i + 1
                    while j < len(steps) and steps[j].kind == "inproc":
                        j += 1
                    ran, good = self._run_inprocs(hp, steps[i:j], ctx, good)  # logged
                    i = j
                result.scripts += ran
                if trace is not None:
                    trace.hook_spans(point, ran, t0, tracing.now_ns())
                if ran[-1].rc == 2:  # a run of in-process hooks stops at the first rc 2
                    result.stopped = True
                    break
        finally:
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        if good.data != original:
            result.payload = good.text(hp)
        return result

    def _payload_file(self, hp: HookPoint, point: str, data: bytes) -> str:
        """A new temp file (mode 0600) holding `data`, in the payload directory; its path."""
        fd, path = tempfile.mkstemp(
            prefix=f"{PAYLOAD_PREFIX}{point}-",
            suffix=".json" if hp.payload == "json" else ".xml",
            dir=self.payload_dir,
        )
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        return path

    def _run_script(
        self, hp: HookPoint, step: _Step, path: str, env: Mapping[str, str], good: Payload
    ) -> tuple[ScriptResult, Payload]:
        assert step.script is not None
        argv: Sequence[str] = [str(step.script.path)]
        done: Completed = self.runner.run(
            argv, env, str(step.script.path.parent), self.timeout, self.output_limit
        )
        try:
            with open(path, "rb") as f:
                new = f.read()
        except OSError:
            new = b""  # the script removed or replaced the file: treated as an edit
            removed = True
        else:
            removed = False
        kept, changed, discarded = judge(hp, good, new, done.rc, done.timed_out)
        if removed and kept is good:
            discarded = discarded or "payload file removed"
        if removed or new != kept.data:
            restore(path, kept.data)
        return (
            ScriptResult(
                name=step.name,
                rc=done.rc,
                duration_ms=round(done.duration * 1000),
                sha256=step.sha256,
                changed_xml=changed,
                stdout_tail=done.stdout_tail,
                stderr_tail=done.stderr_tail,
                timed_out=done.timed_out,
                discarded=discarded,
            ),
            kept,
        )

    def _run_inprocs(
        self, hp: HookPoint, steps: Sequence[_Step], ctx: HookContext, good: Payload
    ) -> tuple[list[ScriptResult], Payload]:
        """Run consecutive in-process hooks: all in one hook thread while none overruns the
        timeout; after one that does, the rest in another thread."""
        results: list[ScriptResult] = []
        # the hook thread logs each hook as it is done, as the caller would (contextvars too)
        logs = contextvars.copy_context()
        while steps:
            run = HookRun(self.timeout)
            run.start(partial(self._inproc_body, hp, steps, ctx, good, logs))
            overran = run.wait()
            results += [res for res, _ in run.results]
            if run.results:
                good = run.results[-1][1]
            if overran is None:
                break
            # the hook after the last recorded one is the one that overran
            step = steps[len(run.results)]
            res = ScriptResult(
                name=step.name,
                rc=1,
                duration_ms=round(overran * 1000),
                sha256=step.sha256,
                stderr_tail=f"did not return within {self.timeout:g}s",
                timed_out=True,
                kind="inproc",
            )
            self._log(ctx.log, res)
            results.append(res)
            steps = steps[len(run.results) + 1 :]
        return results, good

    def _inproc_body(
        self,
        hp: HookPoint,
        steps: Sequence[_Step],
        ctx: HookContext,
        good: Payload,
        logs: contextvars.Context,
        run: HookRun,
    ) -> None:
        """In a hook thread: the hooks one after another, each outcome recorded, then logged
        (in `logs`, a copy of the caller's context)."""
        for step in steps:
            res, good = self._run_inproc(hp, step, ctx, good, run)
            run.record((res, good))
            logs.run(self._log, ctx.log, res)
            if res.rc == 2:
                return

    def _run_inproc(
        self, hp: HookPoint, step: _Step, ctx: HookContext, good: Payload, run: HookRun
    ) -> tuple[ScriptResult, Payload]:
        """In a hook thread: one in-process hook."""
        hook = step.hook
        assert hook is not None
        if step.refused or hook.func is None:
            return self._refused(step), good
        start = time.monotonic()
        value = good.for_hook(hp)
        out = run.call(hook.func, value, ctx)
        # what the hook "wrote": its result, or the value it edited in place
        kept, changed, discarded = good, False, None
        candidate = value if out.result is None else out.result
        if candidate is not None:
            if hp.is_xml and isinstance(candidate, etree._Element):
                candidate = etree.ElementTree(candidate)
            try:
                new = serialize(hp, candidate)
            except (TypeError, ValueError) as exc:
                discarded = f"cannot serialize the result: {exc}"
            else:
                kept, changed, discarded = judge(hp, good, new, out.rc)
        return (
            ScriptResult(
                name=step.name,
                rc=out.rc,
                duration_ms=round((time.monotonic() - start) * 1000),
                sha256=step.sha256,
                changed_xml=changed,
                stderr_tail=out.stderr[-self.output_limit :],
                timed_out=False,
                discarded=discarded,
                kind="inproc",
            ),
            kept,
        )

    @staticmethod
    def _refused(step: _Step) -> ScriptResult:
        return ScriptResult(
            name=step.name,
            rc=1,
            duration_ms=0,
            sha256=step.sha256,
            stderr_tail=step.refused or "refused",
            refused=step.refused or "refused",
            kind=step.kind,
        )

    @staticmethod
    def _log(clog: Any, res: ScriptResult) -> None:
        """One line per hook, by `clog`: the chain's logger, bound with point and vm_id."""
        fields: dict[str, Any] = {
            "name": res.name,
            "kind": res.kind,
            "rc": res.rc,
            "duration_ms": res.duration_ms,
            "changed": res.changed_xml,
        }
        if res.rc != 0 or res.discarded:  # why it failed, as the fail event tells it
            fields["stderr_tail"] = log_tail(res.stderr_tail)
        if res.refused:
            clog.warning("hook.refused", reason=res.refused, **fields)
        elif res.timed_out:
            clog.warning("hook.timed_out", **fields)
        elif res.unexpected_rc:
            clog.warning("hook.unexpected_rc", treated_as=1, **fields)
        elif res.rc != 0 or res.discarded:
            clog.warning(
                "hook.failed" if res.rc else "hook.edit_discarded",
                discarded=res.discarded,
                **fields,
            )
        else:
            clog.info("hook.ran", **fields)
