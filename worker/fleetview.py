"""The fleet picture of `vmworker monitor`, built from events alone: `FleetView.apply(event)` folds
one event into it. A pure model: no broker, no clock of its own (questions about time take `now`),
no rendering (worker/monitor.py draws it)."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

LATE_FACTOR = 2.5  # a host is late when its last heartbeat is older than this many intervals
DOWN_MISSED = 3  # a host is down once this many heartbeats in a row did not come
DOWN_FACTOR = DOWN_MISSED + 0.5  # ... each given half an interval of slack, as LATE_FACTOR is
_STATE_OF_EVENT = {  # state event word -> domain state, when the event carries none
    "defined": "shutoff",
    "undefined": "undefined",
    "started": "running",
    "resumed": "running",
    "paused": "paused",
    "stopped": "shutoff",
    "shutdown": "shutdown",
    "crashed": "crashed",
    "pmsuspended": "pmsuspended",
}
_REFUSED = ("validation", "expired", "unauthorized")  # error sources of a message never run


def parse_time(value: str | None) -> float | None:
    """An event's ISO 8601 `time` as epoch seconds."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@dataclass
class HostRow:
    host: str
    status: str = "unknown"  # online | offline
    last_seen: float | None = None  # time of its last heartbeat/online/offline event
    interval: float | None = None
    version: str | None = None
    libvirt: str | None = None
    hypervisor: str | None = None
    domains: int | None = None
    queue_depth: int | None = None
    outbox: int | None = None
    hooks: int | None = None
    started_at: str | None = None
    by_state: dict[str, int] | None = None  # domains per state, from the heartbeat
    free_mib: int | None = None
    digest: str | None = None  # inventory_digest of its newest heartbeat
    inventory_digest: str | None = None  # ... of the newest inventory seen
    inventory_at: float | None = None

    @property
    def stale(self) -> bool:
        """Its heartbeat names another inventory than the newest one seen (one may have been
        lost, or this reader started between an inventory and its heartbeat)."""
        return self.digest is not None and self.digest != self.inventory_digest


@dataclass
class VmRow:
    uuid: str
    name: str | None = None
    host: str | None = None
    state: str = "unknown"
    state_at: float = 0.0  # time of the newest news about its state
    changed_at: float = 0.0  # when its state last changed
    last_change: str | None = None  # the last state event: "stopped (destroyed)"
    last_op: str | None = None
    result: str | None = None  # running | ok | failed | duplicate
    request_id: str | None = None
    op_at: float = 0.0
    error: str | None = None
    known: bool = False  # an inventory, a state event or a success said it exists

    @property
    def at(self) -> float:
        """Time of the newest news about it."""
        return max(self.op_at, self.changed_at)

    def observe(self, state: str, at: float) -> None:
        """News about the state at time `at`; older news than what we know is ignored."""
        if at < self.state_at:
            return
        if state != self.state:
            self.changed_at = at
        self.state, self.state_at = state, at


@dataclass
class Failure:
    at: float
    host: str | None
    vm: str | None
    vm_name: str | None
    op: str | None
    request_id: str | None
    error: str
    hook: str | None = None
    stderr: str | None = None


@dataclass
class FleetView:
    """The state of a fleet as its events tell it. Feed events with `apply`, in order."""

    max_failures: int = 20
    hosts: dict[str, HostRow] = field(default_factory=dict)
    vms: dict[str, VmRow] = field(default_factory=dict)
    failures: deque[Failure] = field(default_factory=deque)
    applied: int = 0
    _seen: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def apply(self, ev: dict[str, Any]) -> bool:
        """Fold one CloudEvent in; False when it was already applied (same id) or not ours."""
        eid = ev.get("id")
        if eid is not None:
            if eid in self._seen:
                return False
            self._seen[eid] = None
            if len(self._seen) > 200_000:
                self._seen.popitem(last=False)
        words = str(ev.get("type", "")).split(".")
        data = ev.get("data") or {}
        if len(words) < 3 or words[0] != "vmworker" or not isinstance(data, dict):
            return False
        at = parse_time(ev.get("time")) or 0.0
        host = data.get("host") or _host_of(ev)
        if words[1] == "host":
            self._host_event(words[2], host, data, at)
        elif words[1] == "state":
            self._state_event(words[2], host, ev, data, at)
        elif data.get("phase") in ("before", "after", "fail"):
            self._op_event(host, ev, data, at)
        else:
            return False
        self.applied += 1
        return True

    # -- the three kinds of event ---------------------------------------------------------
    def _host_event(self, kind: str, host: str | None, data: dict[str, Any], at: float) -> None:
        if not host:
            return
        row = self.hosts.setdefault(host, HostRow(host))
        if kind == "inventory":
            self._inventory(row, data, at)
            return
        if row.last_seen is not None and at < row.last_seen:
            return  # an older beat, seen late
        row.last_seen = at
        worker = data.get("worker") or {}
        row.version = worker.get("version", row.version)
        row.started_at = worker.get("started_at", row.started_at)
        if kind == "offline":
            row.status = "offline"
            return
        row.status = "online"
        row.interval = data.get("interval_s", row.interval)
        row.queue_depth = data.get("queue_depth")
        row.outbox = data.get("outbox")
        memory = data.get("memory") or (data.get("libvirt") or {}).get("memory") or {}
        row.free_mib = memory.get("free_mib", row.free_mib)
        vms = data.get("vms")
        if isinstance(vms, dict):
            row.domains = vms.get("total", row.domains)
            row.by_state = vms.get("by_state") or {}
        if "inventory_digest" in data:
            row.digest = data["inventory_digest"]
        elif "domains" in data:  # a worker from before host.inventory: its beat is one
            self._inventory(row, data, at)

    def _inventory(self, row: HostRow, data: dict[str, Any], at: float) -> None:
        """What runs on the host and what is installed (`host.inventory`, or the heartbeat of
        a worker from before it)."""
        if row.inventory_at is not None and at < row.inventory_at:
            return
        row.inventory_at = at
        row.inventory_digest = data.get("inventory_digest")
        lv = data.get("libvirt") or {}
        row.libvirt = lv.get("version", row.libvirt)
        if lv.get("hypervisor"):
            row.hypervisor = f"{lv['hypervisor']} {lv.get('hypervisor_version', '')}".strip()
        hooks = data.get("hooks")
        if isinstance(hooks, dict):
            row.hooks = sum(len(v) for v in hooks.values())
        domains = data.get("domains")
        if not isinstance(domains, list):
            return
        if row.by_state is None:  # no heartbeat counted them
            row.domains = len(domains)
        listed = set()
        for d in domains:
            if not isinstance(d, dict):
                continue
            vm = self._vm(d.get("uuid"), d.get("name"), row.host)
            vm.known = True
            listed.add(vm.uuid)
            vm.observe(d.get("state") or "unknown", at)
        if "data.domains" in (data.get("cut") or []):
            return  # the list was cut to fit the event: a VM not in it may still be there
        for vm in self.vms.values():  # known here, not listed any more: gone from this host
            if vm.host == row.host and vm.uuid not in listed:
                vm.observe("undefined", at)

    def _state_event(
        self, word: str, host: str | None, ev: dict[str, Any], data: dict[str, Any], at: float
    ) -> None:
        vm_data = data.get("vm") or {}
        vm = self._vm(vm_data.get("uuid") or ev.get("subject"), vm_data.get("name"), host)
        vm.known = True
        if at >= vm.state_at:
            vm.last_change = f"{word} ({data.get('reason', '?')})"
        vm.observe(data.get("domain_state") or _STATE_OF_EVENT.get(word, "unknown"), at)

    def _op_event(
        self, host: str | None, ev: dict[str, Any], data: dict[str, Any], at: float
    ) -> None:
        phase = data["phase"]
        vm_data = data.get("vm") or {}
        uuid = vm_data.get("uuid") or ev.get("subject")
        error = data.get("error") or {}
        if phase == "fail":
            self._fail(host, uuid, vm_data.get("name"), data, error, at)
        if not uuid:
            return  # a message too broken to name its VM: only in the failures
        if phase == "fail" and uuid not in self.vms and _not_a_vm(error):
            return  # a refused message, or no such domain: only in the failures
        vm = self._vm(uuid, vm_data.get("name"), host)
        if phase == "fail" and not vm.known and _not_a_vm(error):
            del self.vms[vm.uuid]  # its `before` made the row: there is no such VM
            return
        if phase == "after":
            vm.known = True
        if data.get("duplicate"):
            vm.result, vm.request_id = "duplicate", data.get("request_id")
            return  # a re-sent old outcome: says nothing new about the VM's state
        if at < vm.op_at:
            return
        vm.last_op, vm.request_id, vm.op_at = data.get("op"), data.get("request_id"), at
        if phase == "before":
            vm.result, vm.error = "running", None
            return
        vm.result = "ok" if phase == "after" else "failed"
        vm.error = _error_text(error) if phase == "fail" else None
        state = data.get("state")
        if state and state != "unknown":
            vm.observe(state, at)

    def _fail(
        self,
        host: str | None,
        uuid: str | None,
        name: str | None,
        data: dict[str, Any],
        error: dict[str, Any],
        at: float,
    ) -> None:
        if data.get("duplicate"):
            return
        stderr = error.get("stderr")
        hook = error.get("hook")
        if not stderr:  # a failing after-hook or fail-hook: its own tail
            bad = [h for h in data.get("hooks") or [] if h.get("rc") not in (0, None)]
            if bad:
                hook = hook or bad[0].get("name")
                stderr = "\n".join(h.get("stderr_tail") or "" for h in bad).strip() or None
        self.failures.append(
            Failure(
                at,
                host,
                uuid,
                name,
                data.get("op"),
                data.get("request_id"),
                _error_text(error),
                hook,
                stderr,
            )
        )
        while len(self.failures) > self.max_failures:
            self.failures.popleft()

    def _vm(self, uuid: str | None, name: str | None, host: str | None) -> VmRow:
        key = uuid or "?"
        vm = self.vms.get(key)
        if vm is None:
            vm = self.vms[key] = VmRow(key)
        if name:
            vm.name = name
        if host:
            vm.host = host
        return vm

    # -- questions a renderer asks ------------------------------------------------------------
    def silent_for(self, host: HostRow, now: float) -> float | None:
        """Seconds since an online host's last heartbeat if it is late or down, else None."""
        if host.status != "online" or host.last_seen is None or not host.interval:
            return None
        age = now - host.last_seen
        return age if age > LATE_FACTOR * host.interval else None

    def late(self, host: HostRow, now: float) -> float | None:
        """Seconds since the last heartbeat if the host is late (but not yet down), else None."""
        age = self.silent_for(host, now)
        return None if age is None or self.down(host, now) else age

    def down(self, host: HostRow, now: float) -> bool:
        """True once an online host has missed DOWN_MISSED heartbeats (it died, said nothing)."""
        age = self.silent_for(host, now)
        return age is not None and age > DOWN_FACTOR * (host.interval or 0.0)

    def status(self, host: HostRow, now: float) -> str:
        """online | late | down | offline | unknown."""
        if self.down(host, now):
            return "down"
        return "late" if self.late(host, now) is not None else host.status

    def late_hosts(self, now: float) -> list[str]:
        return [h.host for h in self.hosts.values() if self.late(h, now) is not None]

    def down_hosts(self, now: float) -> list[str]:
        return [h.host for h in self.hosts.values() if self.down(h, now)]

    def stale_depth_hosts(self, now: float) -> list[str]:
        """Hosts whose last heartbeat's queue depth is stale: down or offline (their queue
        fills while nobody consumes it); a monitor asks the broker instead."""
        return [h.host for h in self.hosts.values() if self.status(h, now) in ("down", "offline")]

    def vm_state(self, vm: VmRow, now: float) -> str:
        """The VM's state as last told, or `unknown` when its host is down: nobody knows."""
        host = self.hosts.get(vm.host or "")
        return "unknown" if host is not None and self.down(host, now) else vm.state

    def shown_hosts(
        self, now: float, only: Collection[str] = (), offline_after: float | None = None
    ) -> set[str]:
        """The hosts a view shows: those of `only` (all when empty), less those that said
        goodbye more than `offline_after` seconds ago."""
        out: set[str] = set()
        for h in self.hosts.values():
            if only and h.host not in only:
                continue
            gone = h.status == "offline" and h.last_seen is not None
            if gone and offline_after is not None and now - (h.last_seen or 0) > offline_after:
                continue
            out.add(h.host)
        if only:  # a host known only from VMs' or failures' events
            out |= {v.host for v in self.vms.values() if v.host and v.host in only}
        return out

    def host_rank(self, host: HostRow, now: float) -> int:
        """0 needs attention most: down, late, stale inventory, a backlog, online, offline."""
        state = self.status(host, now)
        if state in ("down", "late"):
            return 0 if state == "down" else 1
        if host.stale:
            return 2
        if (host.queue_depth or 0) > 0 or (host.outbox or 0) > 0:
            return 3
        return {"online": 4, "unknown": 5}.get(state, 6)

    def vm_rank(self, vm: VmRow, now: float) -> int:
        """0 needs attention most: failed, unknown (its host is down), crashed, busy, paused."""
        if vm.result == "failed":
            return 0
        state = self.vm_state(vm, now)
        if state in ("unknown", "crashed"):
            return 1 if state == "unknown" else 2
        if vm.result == "running":
            return 3
        return 4 if state == "paused" else 5


def _not_a_vm(error: dict[str, Any]) -> bool:
    """A failure that says the message named no VM there is (refused before it ran, or no
    such domain): not a reason to list a VM."""
    return error.get("source") in _REFUSED or error.get("code") == "no_domain"


def _host_of(ev: dict[str, Any]) -> str | None:
    src = str(ev.get("source", ""))
    return src.split("//", 1)[1] if src.startswith("vmworker://") else None


def _error_text(error: dict[str, Any]) -> str:
    if not error:
        return "?"
    return f"{error.get('source', '?')}/{error.get('code', '?')}: {error.get('message', '')}"
