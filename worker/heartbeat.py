"""The host's heartbeat (liveness and counters) and its inventory (what runs and is installed).

Every `heartbeat_interval` seconds `<host>.host.heartbeat` says the host is alive: worker version
and uptime, how many domains are in each state, the node's memory, the depth of the host queue
and of the outbox, and `inventory_digest`, the sha256 of the inventory (a few hundred bytes,
whatever the number of VMs). The inventory itself (libvirt and hypervisor versions, every domain
with its state and memory, the installed hooks with their sha256, plus what VDSM's
`after_get_caps` hooks add) goes in `<host>.host.inventory`: right after `host.online` (reason
`online`), at a heartbeat whose digest differs from the last one sent (reason `changed`, queued
just before that heartbeat) and every `inventory_interval` seconds (reason `snapshot`), so that
a reader that starts late needs at most that much of the log. `<host>.host.online` (the first
event of a run, queued by the service before it consumes) has the heartbeat's fields;
`<host>.host.offline` is queued on a clean stop. Events go through `sink` (the journal's
outbox), like every other. docs/protocol.md has the fields.
"""

from __future__ import annotations

import contextlib
import hashlib
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


# keys of an inventory event that are not the inventory itself (nor in its digest); `memory`
# changes at every beat on a real host: it is in every heartbeat, not in the digest
NOT_INVENTORY = frozenset({"host", "worker", "reason", "inventory_digest", "cut", "memory"})


def inventory_digest(inventory: dict[str, Any]) -> str:
    """`sha256:<hex>` of the canonical JSON (sorted keys, no spaces) of an inventory's
    own keys (all but NOT_INVENTORY)."""
    part = {k: v for k, v in inventory.items() if k not in NOT_INVENTORY}
    text = json.dumps(part, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def vm_counts(domains: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """`{"total": n, "by_state": {state: n}}` of an inventory's domains (None: unknown)."""
    if domains is None:
        return None
    by_state: dict[str, int] = {}
    for d in domains:
        state = str(d.get("state") or "unknown")
        by_state[state] = by_state.get(state, 0) + 1
    return {"total": len(domains), "by_state": dict(sorted(by_state.items()))}


class Heartbeat:
    """A thread that queues the host's heartbeat on a fixed schedule, and its inventory when
    it changed or is due."""

    def __init__(
        self,
        *,
        host: str,
        interval: float,
        sink: Callable[[str, dict[str, Any]], Any],
        libvirt_conn: LibvirtConnection,
        hooks: HookEngine,
        inventory_interval: float = 3600.0,
        queue_depth: Callable[[], int | None] | None = None,
        outbox_size: Callable[[], int] | None = None,
        in_flight: Callable[[], int] | None = None,
        on_beat: Callable[[], None] | None = None,
        on_inventory: Callable[[dict[str, Any]], None] | None = None,
        online_by_caller: bool = False,
    ) -> None:
        self.host = host
        self.interval = interval
        self.inventory_interval = inventory_interval
        self.sink = sink
        self.lv = libvirt_conn
        self.hooks = hooks
        self.queue_depth = queue_depth
        self.outbox_size = outbox_size
        self.in_flight = in_flight
        self.on_beat = on_beat
        self.on_inventory = on_inventory  # called with each heartbeat's (and online's) data
        self.online_by_caller = online_by_caller  # else the thread says host.online itself
        self._online_done = threading.Event()
        self.started_mono = time.monotonic()
        self.started_at = events.now_iso()
        self.beats = 0
        self.inventories = 0
        self._sent_digest: str | None = None  # of the last inventory event queued
        self._sent_at = 0.0  # monotonic time of it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._said_offline = False
        self._said_online = False
        self._online_lock = threading.Lock()

    def _worker(self) -> dict[str, Any]:
        return {
            "version": worker_version(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
        }

    def inventory(self) -> dict[str, Any]:
        """The `data` of an inventory event (without `reason` and `inventory_digest`):
        everything the control plane knows of this host."""
        data: dict[str, Any] = {"host": self.host, "worker": self._worker()}
        data["libvirt"], memory, data["domains"] = self._libvirt()
        if memory is not None:
            data["memory"] = memory
        try:
            data["hooks"] = self.hooks.inventory()
        except Exception as exc:
            data["hooks"] = None
            data["hooks_error"] = str(exc)
        return self._after_get_caps(data)

    def beat_data(
        self, inventory: dict[str, Any], digest: str, *, queue_depth: bool = True
    ) -> dict[str, Any]:
        """The `data` of a heartbeat (and of `host.online`): liveness and counters only."""
        lv = inventory.get("libvirt") or {}
        data: dict[str, Any] = {
            "host": self.host,
            "worker": self._worker(),
            "interval_s": self.interval,
            "inventory_digest": digest,
            "vms": vm_counts(inventory.get("domains")),
            "libvirt": {k: lv[k] for k in ("uri", "error") if k in lv},
        }
        if inventory.get("memory") is not None:
            data["memory"] = inventory["memory"]
        data["queue_depth"] = self.queue_depth() if self.queue_depth and queue_depth else None
        data["outbox"] = _call(self.outbox_size)
        data["operations_in_flight"] = _call(self.in_flight)
        return data

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

    def _libvirt(
        self,
    ) -> tuple[dict[str, Any], dict[str, int] | None, list[dict[str, Any]] | None]:
        """(libvirt's identity, the node's memory, the domains sorted by uuid)."""
        info: dict[str, Any] = {"uri": self.lv.uri}
        try:
            conn = self.lv.get()
            info["version"] = version_text(conn.getLibVersion())
            info["hypervisor"] = conn.getType()
            info["hypervisor_version"] = version_text(conn.getVersion())
            # what a placement (vmworker drain --by-memory) needs: MiB free for new guests
            memory = {
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
            return info, memory, sorted(domains, key=lambda d: d["uuid"])
        except libvirt.libvirtError as exc:
            info["error"] = str(exc)
            self.lv.reset()
            return info, None, None

    def _queue(self, kind: str, data: dict[str, Any]) -> None:
        ev = events.cloud_event(self.host, ("host", kind), subject=None, request_id=None, data=data)
        self.sink(events.routing_key(self.host, "host", kind), ev)
        if kind in ("online", "heartbeat") and self.on_inventory is not None:
            self.on_inventory(data)

    def _send_inventory(self, inventory: dict[str, Any], digest: str, reason: str) -> None:
        data = {"host": self.host, "worker": inventory["worker"], "reason": reason}
        data["inventory_digest"] = digest
        data.update((k, v) for k, v in inventory.items() if k not in data)
        self._queue("inventory", data)
        self._sent_digest, self._sent_at = digest, time.monotonic()
        self.inventories += 1

    def tick(self) -> None:
        """One beat: the inventory first if it changed (or a snapshot is due), then the
        heartbeat, whose digest is then the one a reader has just seen."""
        inv = self.inventory()
        digest = inventory_digest(inv)
        if digest != self._sent_digest:
            self._send_inventory(inv, digest, "changed")
        elif time.monotonic() - self._sent_at >= self.inventory_interval:
            self._send_inventory(inv, digest, "snapshot")
        self._queue("heartbeat", self.beat_data(inv, digest))

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
        """Queue `host.online` (once) with the host queue's depth as the caller found it,
        before it consumes anything, then the whole inventory (reason `online`)."""
        with self._online_lock:
            if self._said_online:
                return
            inv = self.inventory()
            digest = inventory_digest(inv)
            data = self.beat_data(inv, digest, queue_depth=False)
            data["queue_depth"] = queue_depth
            self._queue("online", data)
            self._send_inventory(inv, digest, "online")
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
                self.tick()
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
                    "worker": self._worker(),
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
