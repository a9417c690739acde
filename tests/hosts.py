"""A second libvirt host on this machine, for migration tests: its own libvirtd (and virtlogd) in
a private mount namespace, so that /run/libvirt, /var/lib/libvirt, /var/cache/libvirt,
/var/log/libvirt and /etc/libvirt are its own, with its own host UUID (libvirt refuses to migrate
to a host with the same one). Its socket lives in a directory both daemons see.

Nothing is mounted outside that namespace: it dies with the daemons, which `stop` kills after
destroying every domain the second host runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from contextlib import suppress
from pathlib import Path

import libvirt

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


class SecondLibvirtd:
    """`start()` then `uri`; `stop()` always leaves no daemon and no QEMU of this host behind."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.host_uuid = str(uuid.uuid4())

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.base}/sock/libvirt-sock"

    @property
    def images(self) -> Path:
        """Where this host's /var/lib/libvirt/images is, as the first host sees it."""
        return self.base / "lib" / "images"

    def start(self, timeout: float = 30.0) -> SecondLibvirtd:
        b = self.base
        for sub in ("sock", "run", "lib", "cache", "log", "etc"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        shutil.copytree("/etc/libvirt", b / "etc", dirs_exist_ok=True)
        (b / "etc" / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{b}/sock"\nhost_uuid = "{self.host_uuid}"\n'
            "listen_tls = 0\nlisten_tcp = 0\n"
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
        """Destroy every domain of this host, then end its daemons (their pids in run/)."""
        with suppress(libvirt.libvirtError):
            conn = libvirt.open(self.uri)
            for dom in conn.listAllDomains(0):
                with suppress(libvirt.libvirtError):
                    dom.destroy()
                with suppress(libvirt.libvirtError):
                    dom.undefine()
            conn.close()
        for name in ("libvirtd", "virtlogd"):
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
