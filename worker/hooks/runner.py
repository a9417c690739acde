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


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


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
                stderr_tail=f"cannot execute {argv[0]}: {exc}",
                duration=time.monotonic() - start,
            )
        assert proc.stdout is not None and proc.stderr is not None
        out, err = TailBuffer(output_limit), TailBuffer(output_limit)
        deadline = start + timeout
        timed_out = False
        pidfd = _pidfd(proc.pid)
        sel = selectors.DefaultSelector()
        try:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            if pidfd is not None:
                sel.register(pidfd, selectors.EVENT_READ, None)
            open_pipes = 2
            exited_at: float | None = None
            while open_pipes:
                now = time.monotonic()
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                    if pidfd is not None:
                        sel.unregister(pidfd)
                limit = deadline if exited_at is None else min(deadline, exited_at + EXIT_GRACE_S)
                if now >= limit:
                    if exited_at is None:
                        timed_out = True
                        kill_group(proc.pid)
                    break
                wait = limit - now
                if exited_at is None and pidfd is None:
                    wait = min(wait, 0.05)  # no pidfd: poll the script a few times a second
                for key, _ in sel.select(wait):
                    if key.data is None:
                        continue  # pidfd readable: the loop head sees the exit
                    chunk = os.read(key.fd, _CHUNK)
                    if chunk:
                        key.data.feed(chunk)
                    else:
                        sel.unregister(key.fileobj)
                        open_pipes -= 1
            if not timed_out:
                try:
                    # output closed early but the script may still be running
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    timed_out = True
                    kill_group(proc.pid)
            if timed_out:
                proc.wait()
        finally:
            sel.close()
            if pidfd is not None:
                os.close(pidfd)
            proc.stdout.close()
            proc.stderr.close()
            if proc.returncode is None:  # only on an exception above
                kill_group(proc.pid)
                proc.wait()
        return Completed(
            rc=proc.returncode,
            stdout_tail=out.text(),
            stderr_tail=err.text(),
            duration=time.monotonic() - start,
            timed_out=timed_out,
            truncated=out.truncated or err.truncated,
        )
