"""The pre-warmed Python hook runner's server: imports once, forks one child per script.

Started by `worker.hooks.prewarm` as `<python3> -E forkserver.py <control fd> <hooklib>`, under
the very interpreter a script's `#!` line names, so a script sees the same Python it would
see exec'd. Standard library only, and never imported by the worker itself.

Protocol, per script: the worker sends on the control socket (SOCK_SEQPACKET) one message
"run" carrying three descriptors: a request socket, and the write ends of the stdout and
stderr pipes. On the request socket it then writes a length-prefixed JSON header
{"argv", "env", "cwd"}. The server forks; the child becomes a fresh session leader and runs
the script as __main__; the server answers {"pid": N} and, once it has reaped the child,
{"rc": R} (negative for a signal). A byte "K" (or EOF) on the request socket kills the
child's process group, unless already reaped.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import selectors
import signal
import socket
import struct
import sys
import traceback
import types
from typing import Any

PRELOAD = ("hooking", "xml.dom.minidom", "json", "subprocess", "lxml.etree", "runpy", "threading")
HEADER_TIMEOUT_S = 10.0


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


def read_header(sock: socket.socket) -> dict[str, Any]:
    sock.settimeout(HEADER_TIMEOUT_S)
    (size,) = struct.unpack("!I", recv_exact(sock, 4))
    header: dict[str, Any] = json.loads(recv_exact(sock, size).decode("utf-8"))
    sock.settimeout(None)
    return header


def send(sock: socket.socket, msg: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the worker gave up on this script
        sock.sendall(json.dumps(msg).encode("utf-8") + b"\n")


def kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):  # kill: in case the child has not called setsid yet
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


def child_main(
    header: dict[str, Any],
    out_fd: int,
    err_fd: int,
    base_path: list[str],
    code: types.CodeType | None = None,
) -> None:
    """In the forked child: become what `execve(script)` would have made, run it, exit."""
    rc = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in (devnull, out_fd, err_fd):
            if fd > 2:
                os.close(fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
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


# (path, device, inode, mtime, size) -> the script compiled, as runpy.run_path would
_compiled: dict[tuple[str, int, int, int, int], types.CodeType] = {}


def compiled(script: str) -> types.CodeType | None:
    """The script's code, compiled here in the server (once per version of the file): a
    child that compiles it itself pays for every page of the server it touches doing so.
    None if it cannot be read or compiled: the child then runs it the plain way, and says why
    as a fresh interpreter would."""
    try:
        st = os.stat(script)
        key = (script, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        code = _compiled.get(key)
        if code is None:
            with open(script, "rb") as f:
                source = f.read()
            # dont_inherit: this module's `from __future__` imports are not the script's
            code = compile(source, script, "exec", dont_inherit=True)
            if len(_compiled) >= 256:
                _compiled.clear()
            _compiled[key] = code
        return code
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


def serve(control: socket.socket) -> None:
    base_path = list(sys.path)
    sel = selectors.DefaultSelector()
    sel.register(control, selectors.EVENT_READ, "control")
    running: dict[int, Request] = {}
    control.sendall(b"ready")

    def reap(req: Request) -> None:
        try:
            pid, status = os.waitpid(req.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = req.pid, 0
        if pid == 0:
            return
        req.reaped = True
        send(req.sock, {"rc": os.waitstatus_to_exitcode(status)})
        if req.listening:
            sel.unregister(req.sock)
        req.sock.close()
        if req.pidfd is not None:
            sel.unregister(req.pidfd)
            os.close(req.pidfd)
        del running[req.pid]

    while True:
        polling = any(r.pidfd is None for r in running.values())
        for key, _ in sel.select(0.02 if polling else None):
            if key.data == "control":
                msg, fds, _flags, _addr = socket.recv_fds(control, 16, 3)
                if not msg:
                    for req in list(running.values()):
                        kill_group(req.pid)
                    return  # the worker is gone
                start(fds, base_path, sel, running, control)
                continue
            req = key.data
            if isinstance(key.fileobj, int):
                reap(req)  # its pidfd is readable
                continue
            try:
                data = req.sock.recv(16)
            except OSError:
                data = b""
            if (not data or b"K" in data) and not req.reaped:
                kill_group(req.pid)
            if not data:  # the worker stopped listening; the child is still reaped
                sel.unregister(req.sock)
                req.listening = False
        for req in [r for r in running.values() if r.pidfd is None]:
            reap(req)


def start(
    fds: list[int],
    base_path: list[str],
    sel: selectors.BaseSelector,
    running: dict[int, Request],
    control: socket.socket,
) -> None:
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return
    req_fd, out_fd, err_fd = fds
    sock = socket.socket(fileno=req_fd)
    try:
        header = read_header(sock)
    except (OSError, EOFError, ValueError) as exc:
        send(sock, {"error": f"bad request: {exc}"})
        for fd in (out_fd, err_fd):
            os.close(fd)
        sock.close()
        return
    code = compiled(str(header.get("argv", [""])[0]))
    pid = os.fork()
    if pid == 0:
        # close what belongs to the server through its objects first, so that nothing
        # garbage-collected later closes a descriptor number the script reuses
        sel.close()
        control.close()
        for other in running.values():
            other.sock.close()
            if other.pidfd is not None:
                os.close(other.pidfd)
        sock.close()
        child_main(header, out_fd, err_fd, base_path, code)
    os.close(out_fd)
    os.close(err_fd)
    req = Request(sock, pid)
    running[pid] = req
    send(sock, {"pid": pid})
    sel.register(sock, selectors.EVENT_READ, req)
    try:
        req.pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        req.pidfd = None  # reaped by polling instead
    if req.pidfd is not None:
        sel.register(req.pidfd, selectors.EVENT_READ, req)


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
    serve(control)


if __name__ == "__main__":
    main()
