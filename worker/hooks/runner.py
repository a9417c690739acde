"""Running one hook script as a process: own session, bounded output, timeout kills the group.

The engine talks to a `Runner`; `ProcessRunner` is the plain fork+exec one. A pre-warmed
runner for Python scripts plugs in behind the same protocol.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

# After the script itself exits, how long to keep draining output that a leftover
# child (still holding the pipes) writes. Such children are not waited for.
EXIT_GRACE_S = 0.2
_CHUNK = 65536


@dataclass(frozen=True)
class Completed:
    """What one run of a script gave: rc is negative when it died by a signal."""

    rc: int
    stdout_tail: str
    stderr_tail: str
    duration: float
    timed_out: bool = False
    truncated: bool = False


class Runner(Protocol):
    """Runs argv with exactly env, in cwd, in a new session.

    Never raises for the script's faults: they are in the Completed.
    """

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        timeout: float,
        output_limit: int,
    ) -> Completed: ...


class TailBuffer:
    """Keeps the last `limit` bytes written to it."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.data = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)

    def text(self) -> str:
        return bytes(self.data).decode("utf-8", errors="replace")


def kill_group(pgid: int) -> None:
    """SIGKILL a whole process group; quiet if it is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def pidfd(pid: int) -> int | None:
    """A descriptor readable when `pid` exits (Linux >= 5.3), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class Exit(Protocol):
    """How `drain` learns that a started script ended, and ends it."""

    def fileno(self) -> int | None:
        """A descriptor readable when the script may have ended (None: poll instead)."""

    def poll(self) -> int | None:
        """The rc if the script has ended, without blocking."""

    def kill(self) -> None:
        """SIGKILL the script's whole process group."""

    def wait(self, timeout: float | None) -> int | None:
        """The rc, or None if the script is still running after timeout seconds."""


def drain(
    stdout: int, stderr: int, ended: Exit, *, start: float, timeout: float, output_limit: int
) -> Completed:
    """Read both output pipes while the script runs, keeping tails; enforce the timeout.

    Closes the two pipe descriptors. After the script exits, output still coming from
    children it left behind is read for EXIT_GRACE_S more, then left.
    """
    out, err = TailBuffer(output_limit), TailBuffer(output_limit)
    deadline = start + timeout
    timed_out = False
    exit_fd = ended.fileno()
    sel = selectors.DefaultSelector()
    rc: int | None = None
    try:
        sel.register(stdout, selectors.EVENT_READ, out)
        sel.register(stderr, selectors.EVENT_READ, err)
        if exit_fd is not None:
            sel.register(exit_fd, selectors.EVENT_READ, None)
        open_pipes = 2
        exited_at: float | None = None
        while open_pipes:
            now = time.monotonic()
            if exited_at is None:
                rc = ended.poll()
                if rc is not None:
                    exited_at = now
                    if exit_fd is not None:
                        sel.unregister(exit_fd)
            limit = deadline if exited_at is None else min(deadline, exited_at + EXIT_GRACE_S)
            if now >= limit:
                if exited_at is None:
                    timed_out = True
                    ended.kill()
                break
            wait = limit - now
            if exited_at is None and exit_fd is None:
                wait = min(wait, 0.05)  # nothing wakes us at the exit: poll
            for key, _ in sel.select(wait):
                if key.data is None:
                    continue  # the exit descriptor: the loop head polls
                chunk = os.read(key.fd, _CHUNK)
                if chunk:
                    key.data.feed(chunk)
                else:
                    sel.unregister(key.fileobj)
                    open_pipes -= 1
        if rc is None and not timed_out:
            # output closed early, but the script may still be running
            rc = ended.wait(max(0.0, deadline - time.monotonic()))
            if rc is None:
                timed_out = True
                ended.kill()
        if rc is None:
            rc = ended.wait(None)
    finally:
        sel.close()
        os.close(stdout)
        os.close(stderr)
        if rc is None:  # only after an exception above
            ended.kill()
            ended.wait(None)
    return Completed(
        rc=-9 if rc is None else rc,
        stdout_tail=out.text(),
        stderr_tail=err.text(),
        duration=time.monotonic() - start,
        timed_out=timed_out,
        truncated=out.truncated or err.truncated,
    )


def shebang_program(script: str) -> str | None:
    """The program a script's `#!` line names, or None when it has no such line."""
    try:
        with open(script, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    # as the kernel reads it: split at a space or tab only, so a CR stays in the name
    program = first[2:].rstrip(b"\n").lstrip(b" \t").replace(b"\t", b" ").split(b" ", 1)[0]
    return os.fsdecode(program) if program else None


def exec_failure(script: str, exc: BaseException) -> str:
    """Why exec of `script` failed; ENOENT for a script that exists is its interpreter's."""
    ours = isinstance(exc, FileNotFoundError) and exc.filename in (None, script)  # not the cwd
    if ours and os.path.isfile(script):
        program = shebang_program(script)
        if program is not None and not os.path.exists(program):
            shown = program if program.isprintable() else repr(program)
            crlf = "; DOS line endings?" if program.endswith("\r") else ""
            return f"interpreter {shown} not found (the script's #! line{crlf})"
    return str(exc)


class _PopenExit:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.fd = pidfd(proc.pid)

    def fileno(self) -> int | None:
        return self.fd

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        if self.proc.returncode is None:  # never once reaped: the pgid could be reused
            kill_group(self.proc.pid)

    def wait(self, timeout: float | None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ProcessRunner:
    """fork+exec, no shell, stdin from /dev/null, stdout and stderr drained together."""

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        timeout: float,
        output_limit: int,
    ) -> Completed:
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except (OSError, ValueError) as exc:
            return Completed(
                rc=1,
                stdout_tail="",
                stderr_tail=f"cannot execute {argv[0]}: {exec_failure(argv[0], exc)}",
                duration=time.monotonic() - start,
            )
        assert proc.stdout is not None and proc.stderr is not None
        ended = _PopenExit(proc)
        # drain owns (and closes) its own copies of the pipe descriptors
        out_fd, err_fd = os.dup(proc.stdout.fileno()), os.dup(proc.stderr.fileno())
        proc.stdout.close()
        proc.stderr.close()
        try:
            return drain(
                out_fd, err_fd, ended, start=start, timeout=timeout, output_limit=output_limit
            )
        finally:
            ended.close()
