"""Private libvirt hosts (tests/hosts.py) that take their incoming migrations on ports of their
own: every libvirtd on a machine hands out the same default range (49152-49215) without knowing
of the others, so two migrations into two daemons at once could be given one port and the second
QEMU fails with "Failed to find an available port". The drain tests and the migration
benchmark use these, both hosts private, so that no other daemon's migrations meet theirs.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import libvirt

from tests.hosts import _SETUP, SecondLibvirtd

FIRST_PORT = 49300  # above libvirt's default range; each host gets PORTS of its own from here
PORTS = 40


class PrivateLibvirtd(SecondLibvirtd):
    """A SecondLibvirtd whose `migration_port_min`..`max` is block `slot` above FIRST_PORT."""

    def __init__(self, base: Path, slot: int) -> None:
        super().__init__(base)
        self.ports = (FIRST_PORT + slot * PORTS, FIRST_PORT + (slot + 1) * PORTS - 1)

    def start(self, timeout: float = 30.0) -> PrivateLibvirtd:
        b = self.base
        for sub in ("sock", "run", "lib", "cache", "log", "etc"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        shutil.copytree("/etc/libvirt", b / "etc", dirs_exist_ok=True)
        (b / "etc" / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{b}/sock"\nhost_uuid = "{self.host_uuid}"\n'
            "listen_tls = 0\nlisten_tcp = 0\n"
        )
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
