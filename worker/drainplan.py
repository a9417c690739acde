"""Draining a host, without a broker or a clock: which VMs run on it (from events), where each
goes (the plan), and how the migrations stand as their events arrive (`DrainRun`).

`vmworker drain` (worker/drain.py) reads events and feeds them here; the unit tests feed
recorded events. What runs where is learnt from events only (`host.inventory` events and state
events, folded by the monitor's FleetView), never from a host's libvirt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.monitor import FleetView, parse_time

MOVABLE = ("running", "paused")  # a shut-off domain has nothing to migrate live
MIGRATE = "migrate_vm"


@dataclass(frozen=True)
class Vm:
    uuid: str
    name: str | None
    state: str
    memory_mib: int | None = None


@dataclass
class Inventory:
    """What the events say of the hosts a drain involves: their VMs, memory and liveness."""

    view: FleetView = field(default_factory=FleetView)
    # host -> data of its newest heartbeat/online event
    beats: dict[str, dict[str, Any]] = field(default_factory=dict)
    beat_at: dict[str, float] = field(default_factory=dict)
    listed: set[str] = field(default_factory=set)  # hosts whose VM list an inventory gave
    vm_memory: dict[str, int] = field(default_factory=dict)  # uuid -> MiB, from inventories

    def apply(self, ev: dict[str, Any]) -> None:
        if not self.view.apply(ev):
            return
        words = str(ev.get("type", "")).split(".")
        data = ev.get("data") or {}
        host, at = data.get("host"), parse_time(ev.get("time")) or 0.0
        if words[1:2] != ["host"] or not host:
            return
        if isinstance(data.get("domains"), list):  # host.inventory (or an old heartbeat)
            self.listed.add(host)
            for d in data["domains"]:
                if isinstance(d, dict) and d.get("uuid") and isinstance(d.get("memory_mib"), int):
                    self.vm_memory[d["uuid"]] = d["memory_mib"]
        if words[2] not in ("heartbeat", "online") or at < self.beat_at.get(host, 0.0):
            return
        self.beats[host], self.beat_at[host] = data, at

    def known(self, host: str, *, source: bool) -> bool:
        """Enough is known of `host`: a heartbeat, and for the source its VMs' list too."""
        return host in self.beats and (not source or host in self.listed)

    def status(self, host: str, now: float) -> str:
        """online | late | down | offline | unknown (never heard of), as the monitor says."""
        row = self.view.hosts.get(host)
        return "unknown" if row is None else self.view.status(row, now)

    def vms_on(self, host: str) -> list[Vm]:
        """The VMs the events place on `host` in a state that migrates, by name."""
        out = [
            Vm(v.uuid, v.name, v.state, self.vm_memory.get(v.uuid))
            for v in self.view.vms.values()
            if v.host == host and v.state in MOVABLE
        ]
        return sorted(out, key=lambda v: (v.name or "", v.uuid))

    def free_mib(self, host: str) -> int | None:
        """The host's free memory as its newest heartbeat says (None: it does not say)."""
        beat = self.beats.get(host, {})
        mem = beat.get("memory") or (beat.get("libvirt") or {}).get("memory") or {}
        free = mem.get("free_mib")
        return free if isinstance(free, int) else None


@dataclass
class Move:
    """One VM to move, and how its migration stands."""

    vm: Vm
    destination: str | None  # None: no destination could take it (by memory)
    # pending | sent | running | ok | gone | failed | no_outcome | unplaced | not_sent
    status: str = "pending"
    request_id: str | None = None
    percent: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error: str | None = None
    sent_at: float | None = None
    ended_at: float | None = None

    @property
    def ended(self) -> bool:
        return self.status in ("ok", "gone", "failed", "no_outcome", "unplaced", "not_sent")

    @property
    def duration(self) -> float | None:
        if self.sent_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.sent_at

    def row(self) -> dict[str, Any]:
        return {
            "vm": self.vm.uuid,
            "name": self.vm.name,
            "memory_mib": self.vm.memory_mib,
            "destination": self.destination,
            "outcome": self.status,
            "request_id": self.request_id,
            "duration_s": None if self.duration is None else round(self.duration, 3),
            "error_code": self.error_code,
            "error": self.error,
        }


def plan_round_robin(vms: list[Vm], destinations: list[str]) -> list[Move]:
    """Each VM in turn to the next destination, in the order given."""
    if not destinations:
        raise ValueError("no destination")
    return [Move(vm, destinations[i % len(destinations)]) for i, vm in enumerate(vms)]


def plan_by_memory(vms: list[Vm], free: dict[str, int | None]) -> list[Move]:
    """Largest VM first, each to the destination with the most free memory left after what
    this plan already put there; a VM no destination has room for is `unplaced`. A VM of
    unknown size counts as 0 MiB; a destination of unknown free memory is never chosen."""
    known = {h: f for h, f in free.items() if f is not None}
    if not known:
        raise ValueError("no destination's heartbeat says how much memory is free")
    left = dict(known)
    order = list(free)  # ties go to the destination named first
    moves: list[Move] = []
    for vm in sorted(vms, key=lambda v: -(v.memory_mib or 0)):
        need = vm.memory_mib or 0
        best = max(left, key=lambda h: (left[h], -order.index(h)))
        if left[best] < need:
            moves.append(Move(vm, None, status="unplaced", error_code="no_room"))
            continue
        left[best] -= need
        moves.append(Move(vm, best))
    return moves


class DrainRun:
    """The migrations of one drain: at most `parallel` under way; each ends with its
    terminal event (`after` ok, `fail` failed) or, past its deadline, `no_outcome`."""

    def __init__(self, moves: list[Move], parallel: int) -> None:
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self.moves = moves
        self.parallel = parallel
        self._by_request: dict[str, Move] = {}

    @property
    def active(self) -> list[Move]:
        return [m for m in self.moves if m.status in ("sent", "running")]

    @property
    def done(self) -> bool:
        return all(m.ended for m in self.moves)

    @property
    def failed(self) -> list[Move]:
        return [m for m in self.moves if m.ended and m.status not in ("ok", "gone")]

    def to_send(self) -> list[Move]:
        """The moves to publish now: the next pending ones, up to `parallel` under way."""
        room = self.parallel - len(self.active)
        return [m for m in self.moves if m.status == "pending"][: max(0, room)]

    def sent(self, move: Move, request_id: str, now: float) -> None:
        move.status, move.request_id, move.sent_at = "sent", request_id, now
        self._by_request[request_id] = move

    def apply(self, ev: dict[str, Any], now: float) -> Move | None:
        """Fold one `<source>.migrate_vm.*` event in; the move it concerns, if any of ours."""
        data = ev.get("data") or {}
        move = self._by_request.get(str(ev.get("requestid") or data.get("request_id")))
        if move is None or move.ended or data.get("op") not in (None, MIGRATE):
            return None
        phase = data.get("phase")
        if phase == "before":
            move.status = "running"
        elif phase == "progress":
            move.status = "running"
            prog = data.get("progress")
            if isinstance(prog, dict):
                move.progress = prog
                pct = prog.get("percent")
                if isinstance(pct, int | float):
                    move.percent = float(pct)
        elif phase == "after":
            move.status, move.percent, move.ended_at = "ok", 100.0, now
        elif phase == "fail":
            err = data.get("error") or {}
            # no such domain on the source any more (undefined since the inventory): nothing
            # left to move, which is what a drain wants
            move.status = "gone" if err.get("code") == "no_domain" else "failed"
            move.ended_at = now
            move.error_code = str(err.get("code") or "unknown")
            move.error = str(err.get("message") or "")
            if err.get("stderr"):  # a refusing hook says why there
                move.error += f" | {err['stderr']}"
        else:
            return None
        return move

    def expire(self, now: float, timeout: float) -> list[Move]:
        """Moves sent more than `timeout` seconds ago with no outcome yet: `no_outcome`."""
        out = []
        for m in self.active:
            if m.sent_at is not None and now - m.sent_at > timeout:
                m.status, m.ended_at, m.error_code = "no_outcome", now, "no_outcome"
                m.error = f"no outcome within {timeout:g} s (the migration may still run)"
                out.append(m)
        return out

    def abort(self, now: float, code: str, why: str) -> None:
        """Give up (the source host went down): what is under way has no known outcome, what
        is pending is not sent."""
        for m in self.moves:
            if m.status in ("sent", "running"):
                m.status, m.ended_at = "no_outcome", now
            elif m.status == "pending":
                m.status = "not_sent"
            else:
                continue
            m.error_code, m.error = code, why
