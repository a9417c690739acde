"""The host's heartbeat: its inventory, as an event, every `heartbeat_interval` seconds.

`<host>.host.online` at start (queued by the service before it consumes: the first event of a
run) and `<host>.host.heartbeat` afterwards carry the same data (worker version and uptime,
libvirt and hypervisor versions, the host's memory and how much is free, every domain with its
state and memory, the installed hooks with their sha256, the depth of the host queue and of the
outbox), plus what VDSM's `after_get_caps` hooks add to it; `<host>.host.offline` is queued on
a clean stop. Events go
through `sink` (the journal's outbox), like every other.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import libvirt
import structlog
from kombu import Connection

from handlers.base import STATE_NAMES
from handlers.connection import LibvirtConnection
from worker import events
from worker.hooks import HookEngine
from worker.logs import tail as log_tail

log = structlog.get_logger()


def worker_version() -> str:
    try:
        return metadata.version("vmworker")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def version_text(n: int) -> str:
    """libvirt's packed version number (9000000) as text (9.0.0)."""
    return f"{n // 1_000_000}.{n // 1000 % 1000}.{n % 1000}"


class QueueDepth:
    """Depth of one queue, read with a passive declare on a connection of its own (the
    service's connection belongs to its thread)."""

    def __init__(self, connect: Callable[[], Connection], queue: str) -> None:
        self.connect = connect
        self.queue = queue
        self._conn: Connection | None = None

    def __call__(self, queue: str | None = None) -> int | None:
        """Messages ready in `queue` (default: the one given at construction), None if unknown."""
        name = queue or self.queue
        for attempt in (1, 2):  # a kept connection may have been closed by the broker meanwhile
            try:
                if self._conn is None:
                    self._conn = self.connect()
                    self._conn.ensure_connection(max_retries=1)
                with self._conn.channel() as ch:
                    return int(ch.queue_declare(name, passive=True).message_count)
            except Exception as exc:  # broker away or queue missing: unknown, not fatal
                self.close()
                if attempt == 2:
                    log.debug("heartbeat.queue_depth_unknown", queue=name, error=str(exc))
        return None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.release()


class Heartbeat:
    """A thread that queues the host's inventory as an event on a fixed schedule."""

    def __init__(
        self,
        *,
        host: str,
        interval: float,
        sink: Callable[[str, dict[str, Any]], Any],
        libvirt_conn: LibvirtConnection,
        hooks: HookEngine,
        queue_depth: Callable[[], int | None] | None = None,
        outbox_size: Callable[[], int] | None = None,
        in_flight: Callable[[], int] | None = None,
        on_beat: Callable[[], None] | None = None,
        on_inventory: Callable[[dict[str, Any]], None] | None = None,
        online_by_caller: bool = False,
    ) -> None:
        self.host = host
        self.interval = interval
        self.sink = sink
        self.lv = libvirt_conn
        self.hooks = hooks
        self.queue_depth = queue_depth
        self.outbox_size = outbox_size
        self.in_flight = in_flight
        self.on_beat = on_beat
        self.on_inventory = on_inventory
        self.online_by_caller = online_by_caller  # else the thread says host.online itself
        self._online_done = threading.Event()
        self.started_mono = time.monotonic()
        self.started_at = events.now_iso()
        self.beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._said_offline = False
        self._said_online = False
        self._online_lock = threading.Lock()

    def inventory(self, *, queue_depth: bool = True) -> dict[str, Any]:
        """The `data` of a heartbeat: everything the control plane knows of this host."""
        data: dict[str, Any] = {
            "host": self.host,
            "worker": {
                "version": worker_version(),
                "pid": os.getpid(),
                "started_at": self.started_at,
                "uptime_s": round(time.monotonic() - self.started_mono, 3),
            },
            "interval_s": self.interval,
        }
        data["libvirt"], data["domains"] = self._libvirt()
        try:
            data["hooks"] = self.hooks.inventory()
        except Exception as exc:
            data["hooks"] = None
            data["hooks_error"] = str(exc)
        data["queue_depth"] = self.queue_depth() if self.queue_depth and queue_depth else None
        data["outbox"] = _call(self.outbox_size)
        data["operations_in_flight"] = _call(self.in_flight)
        return self._after_get_caps(data)

    def _after_get_caps(self, data: dict[str, Any]) -> dict[str, Any]:
        """The inventory through VDSM's `after_get_caps` chain: keys a hook adds are carried,
        the worker's own stay as the worker made them. A hook that fails, times out (each
        script within the hook timeout) or leaves no JSON object changes nothing; with no hook,
        nothing is serialized."""
        if not self.hooks.has_hooks("after_get_caps"):
            return data
        try:
            res = self.hooks.run_chain(
                "after_get_caps", json.dumps(data), vm_id="", context={"host": self.host}
            )
            edited = json.loads(res.payload)
        except Exception:  # a hook's fault must never cost a heartbeat
            log.exception("hook.chain_crashed", point="after_get_caps")
            return data
        if res.failed:
            log.warning(
                "hook.chain_failed",
                point="after_get_caps",
                stderr_tail=log_tail(res.failure_stderr()),
            )
        if not isinstance(edited, dict):
            return data
        return {**edited, **data}

    def _libvirt(self) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
        info: dict[str, Any] = {"uri": self.lv.uri}
        try:
            conn = self.lv.get()
            info["version"] = version_text(conn.getLibVersion())
            info["hypervisor"] = conn.getType()
            info["hypervisor_version"] = version_text(conn.getVersion())
            # what a placement (vmworker drain --by-memory) needs: MiB free for new guests
            info["memory"] = {
                "total_mib": int(conn.getInfo()[1]),
                "free_mib": int(conn.getFreeMemory()) // (1024 * 1024),
            }
            domains = []
            for dom in conn.listAllDomains(0):
                try:
                    domains.append(
                        {
                            "uuid": dom.UUIDString(),
                            "name": dom.name(),
                            "state": STATE_NAMES.get(dom.state()[0], "unknown"),
                            "persistent": bool(dom.isPersistent()),
                            # from the definition: no query of a QEMU busy migrating
                            "memory_mib": int(dom.maxMemory()) // 1024,
                        }
                    )
                except libvirt.libvirtError:
                    continue  # undefined while we listed
            return info, domains
        except libvirt.libvirtError as exc:
            info["error"] = str(exc)
            self.lv.reset()
            return info, None

    def _queue(self, kind: str, data: dict[str, Any]) -> None:
        ev = events.cloud_event(self.host, ("host", kind), subject=None, request_id=None, data=data)
        self.sink(events.routing_key(self.host, "host", kind), ev)
        if kind != "offline" and self.on_inventory is not None:
            self.on_inventory(data)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Heartbeat:
        """Beat every interval once `host.online` is queued: by the caller's `online()` (with
        `online_by_caller`) or else by the thread, at once."""
        try:  # connect now: the start-up log says at once whether libvirt answers
            self.lv.get()
        except libvirt.libvirtError as exc:
            log.warning("libvirt.unreachable", uri=self.lv.uri, error=str(exc))
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def online(self, queue_depth: int | None) -> None:
        """Queue `host.online` (once) with the full inventory and the host queue's depth as
        the caller found it, before it consumes anything."""
        with self._online_lock:
            if self._said_online:
                return
            data = self.inventory(queue_depth=False)
            data["queue_depth"] = queue_depth
            self._queue("online", data)
            self._said_online = True
        self._online_done.set()

    def _run(self) -> None:
        if not self.online_by_caller:
            self.online(self.queue_depth() if self.queue_depth else None)
        while not self._online_done.wait(1.0):  # the caller says it before it consumes
            if self._stop.is_set():
                return
        due = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due += self.interval
            if due < time.monotonic():  # we fell behind (a suspended host): skip, not burst
                due = time.monotonic() + self.interval
            try:
                self._queue("heartbeat", self.inventory())
                self.beats += 1
                if self.on_beat is not None:
                    self.on_beat()
            except Exception:
                log.exception("heartbeat.failed")

    def stop(self, *, offline: bool = True, reason: str = "stopped") -> None:
        """Stop beating; with `offline`, queue `host.offline` (once)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        if offline and not self._said_offline:
            self._said_offline = True
            self._queue(
                "offline",
                {
                    "host": self.host,
                    "reason": reason,
                    "worker": {
                        "version": worker_version(),
                        "pid": os.getpid(),
                        "started_at": self.started_at,
                        "uptime_s": round(time.monotonic() - self.started_mono, 3),
                    },
                    "stopped_at": events.now_iso(),
                },
            )


def _call(fn: Callable[[], int] | None) -> int | None:
    if fn is None:
        return None
    try:
        return int(fn())
    except Exception:
        return None
