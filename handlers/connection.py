"""One shared libvirt connection, reopened when it dies (libvirt connections are thread-safe)."""

from __future__ import annotations

import contextlib
import threading

import libvirt
import structlog

log = structlog.get_logger()

# libvirt prints every error to stderr by default; we report them ourselves
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class LibvirtConnection:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    def get(self) -> libvirt.virConnect:
        """The live connection, opening (or reopening) it if needed."""
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self._close_locked()
            self._conn = libvirt.open(self.uri)
            log.info("libvirt.connected", uri=self.uri)
            return self._conn

    def reset(self) -> None:
        """Drop the connection after an error that says it is gone."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        self.reset()
