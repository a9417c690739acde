"""The pre-warmed Python hook runner's server: imports once, forks one child per script.

Started by `worker.hooks.prewarm` as `<python3> -E forkserver.py <control fd> <hooklib>`, under
the very interpreter a script's `#!` line names, so a script sees the same Python it would
see exec'd. Standard library only, and never imported by the worker itself.

Protocol, per script: the worker sends on the control socket (SOCK_SEQPACKET) one message
"run" carrying three descriptors: a request socket, and the write ends of the stdout and
stderr pipes. On the request socket it then writes a length-prefixed JSON header
{"argv", "env", "cwd"}. The child that runs the script becomes a fresh session leader and runs
it as __main__; the server answers {"pid": N} and, once it has reaped the child, {"rc": R}
(negative for a signal). A byte "K" (or EOF) on the request socket kills the child's process
group, unless already reaped.

The fork is kept off the script's path: the server always has one spare child forked in
advance, already a session leader with stdin on /dev/null, blocked on a socket of its own.
A request goes to the spare (its stdout and stderr descriptors, the header, the compiled
script), and the server forks the next spare while the script runs. Only when there is no
live spare does the server fork a child for the request itself. A spare whose socket reaches
EOF (the server is gone) exits without running anything.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import marshal
import os
import selectors
import signal
import socket
import struct
import sys
import traceback
import types
from typing import Any

PRELOAD = (
    "hooking",
    "xml.dom.minidom",
    # what minidom imports lazily, at the first parse: loading the expat extension in every
    # child costs more than the rest of a small hook
    "xml.dom.expatbuilder",
    "xml.parsers.expat",
    "json",
    "subprocess",
    "lxml.etree",
    "runpy",
    "threading",
)
HEADER_TIMEOUT_S = 10.0
SPARE_PREFIX = struct.Struct("!II")  # sizes of the header and of the marshalled code


class Request:
    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self.pidfd: int | None = None
        self.reaped = False
        self.listening = True  # the request socket is in the selector


def preload(hooklib: str) -> None:
    sys.path.insert(0, hooklib)
    try:
        for name in PRELOAD:
            with contextlib.suppress(ImportError):  # lxml is a bonus, not everywhere
                __import__(name)
    finally:
        sys.path.remove(hooklib)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("request closed")
        data += chunk
    return data


def read_header(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    """The request's header, and its JSON text (what a spare is given)."""
    sock.settimeout(HEADER_TIMEOUT_S)
    (size,) = struct.unpack("!I", recv_exact(sock, 4))
    raw = recv_exact(sock, size)
    header: dict[str, Any] = json.loads(raw.decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("the header is not an object")
    sock.settimeout(None)
    return header, raw


def send(sock: socket.socket, msg: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the worker gave up on this script
        sock.sendall(json.dumps(msg).encode("utf-8") + b"\n")


def kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):  # kill: in case the child has not called setsid yet
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


def become_session() -> None:
    """In a forked child, what does not depend on the script: a new session and process group
    (the group a timeout kills), the default signal dispositions, stdin from /dev/null."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    if devnull != 0:
        os.close(devnull)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115


def child_main(
    header: dict[str, Any],
    out_fd: int,
    err_fd: int,
    base_path: list[str],
    code: types.CodeType | None = None,
    *,
    ready: bool = False,
) -> None:
    """In the forked child: become what `execve(script)` would have made, run it, exit.

    ready: `become_session` was already done (a spare, forked before its request)."""
    rc = 1
    try:
        if not ready:
            become_session()
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in (out_fd, err_fd):
            if fd > 2:
                os.close(fd)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        argv: list[str] = header["argv"]
        script = argv[0]
        env: dict[str, str] = header["env"]
        os.chdir(header["cwd"])
        os.environ.clear()
        os.environ.update(env)
        extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [os.path.dirname(os.path.realpath(script)), *extra, *base_path]
        forget_shadowed_preloads(extra)
        sys.argv[:] = list(argv)
        rc = run_script(script, code)
    except BaseException:
        traceback.print_exc()
        rc = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(rc & 0xFF)


def forget_shadowed_preloads(extra: list[str]) -> None:
    """A `hooking` found earlier on the script's PYTHONPATH wins, as it would when exec'd."""
    hooking = sys.modules.get("hooking")
    origin = os.path.dirname(getattr(hooking, "__file__", "") or "")
    for entry in extra:
        if os.path.realpath(entry) == os.path.realpath(origin):
            return
        if os.path.exists(os.path.join(entry, "hooking.py")) or os.path.isdir(
            os.path.join(entry, "hooking")
        ):
            sys.modules.pop("hooking", None)
            return


# (path, device, inode, mtime, size) -> the script compiled, as runpy.run_path would, and
# marshalled for a spare
_compiled: dict[tuple[str, int, int, int, int], tuple[types.CodeType, bytes]] = {}


def compiled(script: str) -> tuple[types.CodeType, bytes] | None:
    """The script's code, compiled here in the server (once per version of the file): a
    child that compiles it itself pays for every page of the server it touches doing so.
    None if it cannot be read or compiled: the child then runs it the plain way, and says why
    as a fresh interpreter would."""
    try:
        st = os.stat(script)
        key = (script, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        found = _compiled.get(key)
        if found is None:
            with open(script, "rb") as f:
                source = f.read()
            # dont_inherit: this module's `from __future__` imports are not the script's
            code = compile(source, script, "exec", dont_inherit=True)
            found = (code, marshal.dumps(code))
            if len(_compiled) >= 256:
                _compiled.clear()
            _compiled[key] = found
        return found
    except (OSError, SyntaxError, ValueError):
        return None


def run_script(script: str, main_code: types.CodeType | None = None) -> int:
    import runpy
    import threading

    rc = 0
    try:
        if main_code is None:
            runpy.run_path(script, run_name="__main__")
        else:  # what run_path does with a plain file, minus finding and compiling it
            main = types.ModuleType("__main__")
            main.__dict__.update(
                __file__=script, __cached__=None, __loader__=None, __package__="", __spec__=None
            )
            sys.modules["__main__"] = main
            exec(main_code, main.__dict__)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            rc = 0
        elif isinstance(code, int):
            rc = code
        else:
            print(code, file=sys.stderr)
            rc = 1
    except BaseException as exc:
        # the traceback a fresh interpreter prints, without runpy's frames
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb or exc.__traceback__)
        rc = 1
    threading._shutdown()  # type: ignore[attr-defined]  # non-daemon threads, as at exit
    atexit._run_exitfuncs()
    return rc


def open_pidfd(pid: int) -> int | None:
    """A descriptor readable once `pid` exits; None where the kernel or Python has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class Spare:
    """A child forked before its request, waiting for it on its own socket."""

    def __init__(self, pid: int, chan: socket.socket) -> None:
        self.pid = pid
        self.chan = chan
        self.pidfd: int | None = None


def rehearse() -> None:
    """In a spare, while it waits: do, without effect, what the request will do.

    Every page of the server that a child writes to (a reference count is a write) is copied
    at that first write, a few microseconds each. Done here, those copies are made before the
    request, not on the script's time. Leaves the environment as it was, in the same order.
    """
    env = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    json.loads(json.dumps({"argv": ["/"], "env": env, "cwd": "/"}))
    minidom = sys.modules.get("xml.dom.minidom")
    if minidom is not None:
        minidom.parseString("<a b='c'><d>e</d></a>").toxml(encoding="utf-8")


def spare_main(chan: socket.socket, base_path: list[str]) -> None:
    """In a spare: get ready, wait for the request, run it as `child_main` does, exit.

    EOF instead of a request (the server stopped, or died): exit at once, quietly."""
    try:
        become_session()
        with contextlib.suppress(Exception):  # a help only; the request sets all it needs
            rehearse()
        msg, fds, _flags, _addr = socket.recv_fds(chan, SPARE_PREFIX.size, 2)
    except BaseException:
        os._exit(1)
    if len(fds) != 2:
        os._exit(0)  # EOF: no request for this one
    out_fd, err_fd = fds
    try:
        if len(msg) < SPARE_PREFIX.size:
            msg += recv_exact(chan, SPARE_PREFIX.size - len(msg))
        header_size, code_size = SPARE_PREFIX.unpack(msg)
        body = recv_exact(chan, header_size + code_size)
        chan.close()
        header = json.loads(body[:header_size].decode("utf-8"))
        code = marshal.loads(body[header_size:]) if code_size else None
    except BaseException:
        with contextlib.suppress(OSError):
            os.write(err_fd, traceback.format_exc().encode("utf-8", "replace"))
        os._exit(1)
    child_main(header, out_fd, err_fd, base_path, code, ready=True)


class Server:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.base_path = list(sys.path)
        self.sel = selectors.DefaultSelector()
        self.running: dict[int, Request] = {}
        self.spare: Spare | None = None

    def serve(self) -> None:
        self.sel.register(self.control, selectors.EVENT_READ, "control")
        self.new_spare()
        self.control.sendall(b"ready")
        while True:
            polling = any(r.pidfd is None for r in self.running.values())
            for key, _ in self.sel.select(0.02 if polling else None):
                if key.data == "control":
                    msg, fds, _flags, _addr = socket.recv_fds(self.control, 16, 3)
                    if not msg:
                        self.stop()
                        return  # the worker is gone
                    self.start(fds)
                    continue
                if isinstance(key.data, Spare):
                    if key.data is self.spare:
                        self.drop_spare()  # it died before its request
                    continue
                req = key.data
                if req.reaped:
                    continue  # an event of this same round, from before the reaping
                if isinstance(key.fileobj, int):
                    self.reap(req)  # its pidfd is readable
                    continue
                try:
                    data = req.sock.recv(16)
                except OSError:
                    data = b""
                if not data or b"K" in data:
                    kill_group(req.pid)
                if not data:  # the worker stopped listening; the child is still reaped
                    self.sel.unregister(req.sock)
                    req.listening = False
            for req in [r for r in self.running.values() if r.pidfd is None]:
                self.reap(req)

    def reap(self, req: Request) -> None:
        try:
            pid, status = os.waitpid(req.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = req.pid, 0
        if pid == 0:
            return
        req.reaped = True
        send(req.sock, {"rc": os.waitstatus_to_exitcode(status)})
        if req.listening:
            self.sel.unregister(req.sock)
            req.listening = False
        req.sock.close()
        if req.pidfd is not None:
            self.sel.unregister(req.pidfd)
            os.close(req.pidfd)
        del self.running[req.pid]

    def stop(self) -> None:
        """The worker is gone: kill every running script's group, and the spare."""
        for req in list(self.running.values()):
            kill_group(req.pid)
        self.drop_spare()

    def fork(self) -> int:
        """os.fork(); the child first closes what belongs to the server, through its objects,
        so that nothing garbage-collected later closes a descriptor number the script reuses."""
        pid = os.fork()
        if pid == 0:
            self.sel.close()
            self.control.close()
            for other in self.running.values():
                other.sock.close()
                if other.pidfd is not None:
                    os.close(other.pidfd)
            if self.spare is not None:
                self.spare.chan.close()
                if self.spare.pidfd is not None:
                    os.close(self.spare.pidfd)
        return pid

    def new_spare(self) -> None:
        """Fork the next spare (none if the fork fails: requests then fork their own child)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = self.fork()
        except OSError:
            ours.close()
            theirs.close()
            return
        if pid == 0:
            ours.close()
            spare_main(theirs, self.base_path)
            os._exit(0)  # not reached
        theirs.close()
        spare = Spare(pid, ours)
        spare.pidfd = open_pidfd(pid)  # without one, a death is seen when handed a request
        if spare.pidfd is not None:
            self.sel.register(spare.pidfd, selectors.EVENT_READ, spare)
        self.spare = spare

    def drop_spare(self) -> None:
        """Kill and reap the spare, if any."""
        spare, self.spare = self.spare, None
        if spare is None:
            return
        kill_group(spare.pid)
        spare.chan.close()
        if spare.pidfd is not None:
            self.sel.unregister(spare.pidfd)
            os.close(spare.pidfd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(spare.pid, 0)

    def hand_to_spare(self, raw: bytes, code: bytes, out_fd: int, err_fd: int) -> Spare | None:
        """Give the request to the spare; None if there is none or it is dead."""
        spare = self.spare
        if spare is None:
            return None
        try:
            spare.chan.settimeout(HEADER_TIMEOUT_S)
            prefix = SPARE_PREFIX.pack(len(raw), len(code))
            socket.send_fds(spare.chan, [prefix], [out_fd, err_fd])
            spare.chan.sendall(raw + code)
        except OSError:
            self.drop_spare()
            return None
        self.spare = None
        spare.chan.close()
        return spare

    def start(self, fds: list[int]) -> None:
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            return
        req_fd, out_fd, err_fd = fds
        sock = socket.socket(fileno=req_fd)
        try:
            header, raw = read_header(sock)
        except (OSError, EOFError, ValueError) as exc:
            send(sock, {"error": f"bad request: {exc}"})
            for fd in (out_fd, err_fd):
                os.close(fd)
            sock.close()
            return
        found = compiled(str((header.get("argv") or [""])[0]))
        code, code_bytes = found if found is not None else (None, b"")
        spare = self.hand_to_spare(raw, code_bytes, out_fd, err_fd)
        if spare is not None:
            pid, pidfd = spare.pid, spare.pidfd
            if pidfd is not None:
                self.sel.unregister(pidfd)
        else:
            pid = self.fork()
            if pid == 0:
                sock.close()
                child_main(header, out_fd, err_fd, self.base_path, code)
            pidfd = open_pidfd(pid)  # without one, reaped by polling instead
        # before the next fork: a spare holding these would keep the worker's pipes open
        os.close(out_fd)
        os.close(err_fd)
        req = Request(sock, pid)
        req.pidfd = pidfd
        self.running[pid] = req
        send(sock, {"pid": pid})
        self.sel.register(sock, selectors.EVENT_READ, req)
        if pidfd is not None:
            self.sel.register(pidfd, selectors.EVENT_READ, req)
        if self.spare is None:
            self.new_spare()  # while the script runs


def main() -> None:
    if sys.version_info < (3, 9):  # noqa: UP036  (runs under the scripts' python, maybe older)
        sys.exit("the pre-warmed hook runner needs Python >= 3.9")
    control_fd, hooklib = int(sys.argv[1]), sys.argv[2]
    del sys.path[0]  # this file's directory: scripts must not see the worker's modules
    control = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C is the worker's to handle
    preload(hooklib)
    # what is loaded now stays out of the children's garbage collections: a collection would
    # touch every object, and so copy every page the fork shares with this server
    gc.collect()
    gc.freeze()
    Server(control).serve()


if __name__ == "__main__":
    main()
