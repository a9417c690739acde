"""Private libvirt hosts on this machine, for migration tests and the migration benchmark: each
its own libvirtd (and virtlogd) in a private mount namespace, so that /run/libvirt,
/var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and /etc/libvirt are its own, with its
own host UUID (libvirt refuses to migrate to a host with the same one). Its socket lives in a
directory both daemons see.

A host given a port `slot` takes its incoming migrations on ports of its own: every libvirtd on a
machine hands out the same default range (49152-49215) without knowing of the others, so two
migrations into two daemons at once could be given one port and the second QEMU fails with
"Failed to find an available port". The drain tests (slots 0 and 1) and the migration benchmark
(2 and 3) use these, both hosts private, so that no other daemon's migrations meet theirs.

Nothing is mounted outside that namespace: it dies with the daemons, which `stop` kills after
destroying every domain the host runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import libvirt

from handlers.base import domain_state
from tests.support import (
    Env,
    EventTap,
    ProcessWorker,
    ThreadWorker,
    libvirt_cleanup,
    small_vm,
    unique,
)

_SETUP = """
set -e
mount -t tmpfs none /run/libvirt
mount --bind {b}/lib /var/lib/libvirt
mount --bind {b}/cache /var/cache/libvirt
mount --bind {b}/log /var/log/libvirt
mount --bind {b}/etc /etc/libvirt
mkdir -p /var/lib/libvirt/qemu /var/lib/libvirt/images
virtlogd -d -p {b}/run/virtlogd.pid
exec libvirtd -d -p {b}/run/libvirtd.pid -f /etc/libvirt/libvirtd.conf
"""

FIRST_PORT = 49300  # above libvirt's default range; each slot gets PORTS of its own from here
PORTS = 40


class PrivateLibvirtd:
    """`start()` then `uri`; `stop()` always leaves no daemon and no QEMU of this host behind.
    With a `slot`, its `migration_port_min`..`max` is block `slot` above FIRST_PORT; without,
    libvirt's default range."""

    def __init__(self, base: Path, slot: int | None = None) -> None:
        self.base = base
        self.host_uuid = str(uuid.uuid4())
        self.ports = (
            None
            if slot is None
            else (FIRST_PORT + slot * PORTS, FIRST_PORT + (slot + 1) * PORTS - 1)
        )

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.base}/sock/libvirt-sock"

    @property
    def qemu_hook(self) -> Path:
        """Where a test puts a libvirt qemu hook script of this host's (libvirtd's own, run
        synchronously by the daemon: `$1` the domain's name, `$2` the operation, `$3` its
        stage); absent, nothing runs."""
        return self.base / "qemu-hook"

    def start(self, timeout: float = 30.0) -> PrivateLibvirtd:
        b = self.base
        for sub in ("sock", "run", "lib", "cache", "log", "etc"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        shutil.copytree("/etc/libvirt", b / "etc", dirs_exist_ok=True)
        # libvirtd looks for its hook scripts only at start: one that runs a test's, if any
        (b / "etc" / "hooks").mkdir(exist_ok=True)
        hook = b / "etc" / "hooks" / "qemu"
        hook.write_text(
            f'#!/bin/sh\n[ -x {self.qemu_hook} ] && exec {self.qemu_hook} "$@"\nexit 0\n'
        )
        hook.chmod(0o755)
        (b / "etc" / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{b}/sock"\nhost_uuid = "{self.host_uuid}"\n'
            "listen_tls = 0\nlisten_tcp = 0\n"
        )
        if self.ports is not None:
            qemu_conf = b / "etc" / "qemu.conf"
            lo, hi = self.ports
            qemu_conf.write_text(
                qemu_conf.read_text() + f"\nmigration_port_min = {lo}\nmigration_port_max = {hi}\n"
            )
        subprocess.run(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", _SETUP.format(b=b)],
            check=True,
            timeout=timeout,
            capture_output=True,
        )
        end = time.monotonic() + timeout
        while True:
            try:
                libvirt.open(self.uri).close()
                return self
            except libvirt.libvirtError:
                if time.monotonic() > end:
                    self.stop()
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """Destroy every domain of this host, then end its daemons; safe when it never started."""
        with suppress(libvirt.libvirtError):
            conn = libvirt.open(self.uri)
            for dom in conn.listAllDomains(0):
                with suppress(libvirt.libvirtError):
                    dom.destroy()
                with suppress(libvirt.libvirtError):
                    dom.undefine()
            conn.close()
        for name in ("libvirtd", "virtlogd"):  # their pids in run/
            pid = self._pid(name)
            if pid is None:
                continue
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _gone(pid, 10.0):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _gone(pid, 5.0)

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.base / "run" / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None


def _gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return False


@contextmanager
def private_libvirtds(tag: str, *slots: int | None) -> Iterator[list[PrivateLibvirtd]]:
    """One started PrivateLibvirtd per slot (None: libvirt's default ports), each in a new
    directory /tmp/vmw-`tag`N-* (short: the daemon's socket path must fit a sockaddr_un's 108
    bytes); stopped with every domain it ran and removed at the end, even when a test failed."""
    hosts: list[PrivateLibvirtd] = []
    try:
        for n, slot in enumerate(slots):
            base = Path(tempfile.mkdtemp(prefix=f"vmw-{tag}{n}-", dir="/tmp"))
            hosts.append(PrivateLibvirtd(base, slot))
            hosts[-1].start()
        yield hosts
    finally:
        for h in hosts:
            h.stop()
            shutil.rmtree(h.base, ignore_errors=True)


class TwoHosts:
    """Two workers of one test, `a` on one libvirt host and `b` on another, each with its own
    state directory and hooks root, and a peers table naming the other: what a migration
    needs. `start(host)` (again after a kill), `start_both()` and `stop()`; workers run as
    threads, or as processes with `process=True` (for kill -9). Made by `two_workers`."""

    def __init__(
        self, env: Env, tmp: Path, uri_a: str, uri_b: str, b_root: Path = Path("/")
    ) -> None:
        self.env = env
        self.a, self.b = env.host, unique("hb")
        env.other_hosts.append(self.b)
        self.uri = {self.a: uri_a, self.b: uri_b}
        self.hooks = {self.a: env.hooks_root, self.b: tmp / "hooks-b"}
        self.hooks[self.b].mkdir(mode=0o755, exist_ok=True)
        self.hooks[self.b].chmod(0o755)
        self.state = {self.a: env.state_dir, self.b: tmp / "state-b"}
        self.workers: dict[str, Any] = {}
        self.domains: tuple[list[str], list[str]] = ([], [])  # uuids cleaned up on a and b
        self.tmp = tmp
        self.b_root = b_root  # host b's /var/lib/libvirt, as this host sees it

    def settings(self, host: str, **kw: Any) -> dict[str, Any]:
        peers = {
            h: {"libvirt_uri": u, "migration_uri": "tcp://127.0.0.1"}
            for h, u in self.uri.items()
            if h != host
        }
        return dict(
            host=host,
            libvirt_uri=self.uri[host],
            state_dir=self.state[host],
            hooks_root=self.hooks[host],
            peers=peers,
            **kw,
        )

    def start(self, host: str, *, process: bool = False, **kw: Any) -> Any:
        if process:
            w: Any = ProcessWorker(
                self.env, self.tmp / f"worker-{host}.log", **self.settings(host, **kw)
            ).start()
        else:
            w = ThreadWorker(self.env.settings(**self.settings(host, **kw))).start()
        self.workers[host] = w
        return w

    def start_both(self, *, process: str | None = None, **kw: Any) -> None:
        """A worker on each host, both with settings `kw`: threads, but host `process`'s a
        process (to kill -9)."""
        for host in (self.a, self.b):
            self.start(host, process=host == process, **kw)

    def running_vm(
        self, tap: EventTap, tag: str, *, on: str | None = None, **spec: Any
    ) -> dict[str, Any]:
        """A small VM (`spec` on top) started through the worker of host `on` (a), removed
        from both hosts at the end."""
        vm = small_vm(tag, **spec)
        self.domains[0].append(vm["uuid"])
        self.domains[1].append(vm["uuid"])
        rid = self.env.publish("start_vm", vm, routing_key=on or self.a)
        assert tap.wait_terminal(rid, 60)["data"]["phase"] == "after"
        return vm

    def stop(self) -> None:
        for w in self.workers.values():
            proc = getattr(w, "proc", None)
            if proc is not None:
                if proc.poll() is None:
                    w.stop()
            elif w.thread.is_alive():
                w.stop()
        self.workers.clear()


@contextmanager
def two_workers(
    env: Env, tmp: Path, uri_a: str, uri_b: str, b_root: Path = Path("/")
) -> Iterator[TwoHosts]:
    """TwoHosts on libvirt `uri_a` and `uri_b`, no worker started yet; at the end both workers
    are stopped and every VM of its `domains` is destroyed and undefined on both hosts."""
    hosts = TwoHosts(env, tmp, uri_a, uri_b, b_root)
    with libvirt_cleanup(uri_a) as on_a, libvirt_cleanup(uri_b) as on_b:
        hosts.domains = (on_a, on_b)
        try:
            yield hosts
        finally:
            hosts.stop()


def where(h: TwoHosts, uuid: str) -> dict[str, str]:
    """The VM's state on each host ('undefined' where it is not)."""
    out = {}
    for host, uri in h.uri.items():
        conn = libvirt.open(uri)
        try:
            try:
                out[host] = domain_state(conn.lookupByUUIDString(uuid))
            except libvirt.libvirtError:
                out[host] = "undefined"
        finally:
            conn.close()
    return out
