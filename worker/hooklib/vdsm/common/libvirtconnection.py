"""A connection to the host's libvirt (`qemu:///system`), one per process, as VDSM's `get()`."""

import threading

import libvirt

_URI = "qemu:///system"
_lock = threading.Lock()
_conn = None


def get(target=None, killOnFailure=True):
    """The process's connection to the host's libvirt, opened on first use (again if lost).

    VDSM's arguments are accepted; `target` (an event target) and `killOnFailure` (VDSM kills
    its daemon when libvirt goes away) mean nothing to a hook script."""
    global _conn
    with _lock:
        if _conn is None or not _conn.isAlive():
            _conn = libvirt.open(_URI)
        return _conn
