"""A pre-warmed runner for Python hook scripts: a fork server per interpreter.

A `#!/usr/bin/env python3` (or `#!/usr/bin/python3.N`) script is not exec'd: a server started
once under that same interpreter, with `hooking`, minidom and lxml already imported, forks a
child that runs it as `__main__` with the script's environment, cwd, stdio, session and
process group. The engine sees the same `Completed` as from `ProcessRunner`, whose exec path
every other script (and every Python script, when a server cannot start) still takes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from worker.hooks.runner import Completed, ProcessRunner, Runner, drain, kill_group

SERVER = Path(__file__).resolve().parent / "forkserver.py"
HOOKLIB = Path(__file__).resolve().parent.parent / "hooklib"
START_TIMEOUT_S = 10.0
# after a kill request, how long the server has to report the rc before we stop waiting
KILL_GRACE_S = 5.0
# a server that had to be started this many times is given up: exec from then on
MAX_STARTS = 3
SHEBANG_RE = re.compile(rb"^#!\s*(\S+)(?:[ \t]+(\S+))?[ \t]*$")
PYTHON_RE = re.compile(r"^python3(\.\d+)?$")

log = structlog.get_logger(__name__)


def python_interpreter(script: str, path: str | None) -> str | None:
    """The python3 a script's `#!` line would exec, or None if it is not a plain python3 one."""
    try:
        with open(script, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    m = SHEBANG_RE.match(first.rstrip(b"\r\n"))
    if not m:
        return None
    prog = m.group(1).decode("utf-8", "replace")
    arg = m.group(2).decode("utf-8", "replace") if m.group(2) else None
    if os.path.basename(prog) == "env" and arg and PYTHON_RE.match(arg):
        found = shutil.which(arg, path=path or os.defpath)
        return os.path.abspath(found) if found else None
    if arg is None and PYTHON_RE.match(os.path.basename(prog)) and os.access(prog, os.X_OK):
        return prog
    return None  # interpreter flags (-u, -S...) change startup: exec it for real


class ServerGone(Exception):
    """The fork server died or answered nonsense; the script is run by exec instead."""


class _ServerExit:
    """The `Exit` of a script run by the server: rc and kills go through the request socket."""

    def __init__(self, sock: socket.socket, pid: int, early: bytes = b"") -> None:
        self.sock = sock
        self.pid = pid
        self.rc: int | None = None
        self.buf = b""
        self.lost = False
        self._take(early)  # what came in with the pid: the rc, if the script was that quick

    def fileno(self) -> int | None:
        return None if self.lost else self.sock.fileno()

    def _read(self, timeout: float) -> None:
        """Take in what the server said within timeout seconds (0: only what is there)."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.lost = True
            return
        self._take(chunk)

    def _take(self, chunk: bytes) -> None:
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            msg = json.loads(line)
            if "rc" in msg:
                self.rc = int(msg["rc"])

    def poll(self) -> int | None:
        if self.rc is None and not self.lost:
            self._read(0.0)
        if self.rc is None and self.lost:
            self.rc = -9  # the server died: so did its reaping; the child was killed below
            kill_group(self.pid)
        return self.rc

    def kill(self) -> None:
        if self.rc is not None:
            return
        try:
            self.sock.sendall(b"K")  # the server kills unless it already reaped
        except OSError:
            kill_group(self.pid)

    def wait(self, timeout: float | None) -> int | None:
        # None is only asked for after a kill: the server gets KILL_GRACE_S to report
        deadline = time.monotonic() + (KILL_GRACE_S if timeout is None else timeout)
        while self.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                if timeout is None:  # the server does not answer: do it ourselves
                    kill_group(self.pid)
                    self.rc = -9
                return self.rc
            self._read(left)
        return self.rc


class _Server:
    """One fork server process, started under `python`, talked to over a SEQPACKET pair."""

    def __init__(self, python: str) -> None:
        self.python = python
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [python, "-E", str(SERVER), str(theirs.fileno()), str(HOOKLIB)],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a ^C to the worker is not the server's
            )
        finally:
            theirs.close()
        self.control = ours
        self.lock = threading.Lock()
        ours.settimeout(START_TIMEOUT_S)
        try:
            hello = ours.recv(16)
        except OSError as exc:
            self.close()
            raise ServerGone(f"fork server under {python} did not start: {exc}") from None
        if hello != b"ready":
            self.close()
            raise ServerGone(f"fork server under {python} did not start")
        ours.settimeout(None)

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        timeout: float,
        output_limit: int,
    ) -> Completed:
        start = time.monotonic()
        req, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            header = json.dumps({"argv": list(argv), "env": dict(env), "cwd": cwd}).encode()
            try:
                with self.lock:
                    socket.send_fds(self.control, [b"run"], [theirs.fileno(), out_w, err_w])
            except OSError as exc:
                raise ServerGone(f"fork server under {self.python}: {exc}") from None
            req.sendall(struct.pack("!I", len(header)) + header)
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            req.close()
            raise
        finally:
            theirs.close()
            os.close(out_w)
            os.close(err_w)
        try:
            pid, early = self._pid(req)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            req.close()
            raise
        try:
            return drain(
                out_r,
                err_r,
                _ServerExit(req, pid, early),
                start=start,
                timeout=timeout,
                output_limit=output_limit,
            )
        finally:
            req.close()

    def _pid(self, req: socket.socket) -> tuple[int, bytes]:
        """The script's pid, and whatever the server said after it (its rc, if it is done)."""
        req.settimeout(START_TIMEOUT_S)
        data = b""
        try:
            while b"\n" not in data:
                chunk = req.recv(4096)
                if not chunk:
                    raise ServerGone(f"fork server under {self.python} closed the request")
                data += chunk
        except TimeoutError:
            raise ServerGone(f"fork server under {self.python} did not answer") from None
        line, rest = data.split(b"\n", 1)
        msg = json.loads(line)
        if "pid" not in msg:
            raise ServerGone(f"fork server under {self.python}: {msg.get('error', msg)}")
        return int(msg["pid"]), rest

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        self.control.close()  # the server kills its children and exits on EOF
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ForkServerRunner:
    """Runs plain-python3 scripts in a pre-warmed fork server, everything else by exec."""

    def __init__(self, fallback: Runner | None = None) -> None:
        self.fallback: Runner = fallback if fallback is not None else ProcessRunner()
        self._servers: dict[str, _Server | None] = {}
        self._starts: dict[str, int] = {}
        self._lock = threading.Lock()

    def server_for(self, python: str) -> _Server | None:
        """The running server for this interpreter, started on first use (None if it can't)."""
        with self._lock:
            server = self._servers.get(python)
            if server is not None and not server.alive():
                log.warning("hook.forkserver.died", python=python)
                server.close()
                server = None
                self._servers.pop(python, None)
            if python not in self._servers:
                self._starts[python] = self._starts.get(python, 0) + 1
                if self._starts[python] > MAX_STARTS:
                    log.warning("hook.forkserver.given_up", python=python, starts=MAX_STARTS)
                    self._servers[python] = None
                    return None
                try:
                    server = _Server(python)
                    log.info("hook.forkserver.started", python=python, pid=server.proc.pid)
                except (OSError, ServerGone) as exc:
                    log.warning("hook.forkserver.unavailable", python=python, error=str(exc))
                    server = None
                self._servers[python] = server
            return self._servers[python]

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        timeout: float,
        output_limit: int,
    ) -> Completed:
        python = python_interpreter(argv[0], env.get("PATH"))
        server = self.server_for(python) if python else None
        if server is not None:
            try:
                return server.run(argv, env, cwd, timeout, output_limit)
            except ServerGone as exc:
                # nothing of the script ran yet: exec it as usual
                log.warning("hook.forkserver.failed", python=python, error=str(exc))
                with self._lock:
                    if self._servers.get(python or "") is server:
                        self._servers.pop(python or "", None)
                with contextlib.suppress(Exception):
                    server.close()
        return self.fallback.run(argv, env, cwd, timeout, output_limit)

    def close(self) -> None:
        """Stop every server (their running scripts are killed)."""
        with self._lock:
            servers = [s for s in self._servers.values() if s is not None]
            self._servers.clear()
        for server in servers:
            server.close()
