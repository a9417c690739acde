"""Hook points as data: one row per base point, three chains (before/after/after_fail) each.

VDSM spells the same table as 57 wrapper functions; here a point is a name, the kind of payload
its scripts receive, and whether a failing chain aborts the operation. Which point an operation
runs is part of its declaration (`handlers.base.Operation.point`, `.devices`); the host points
(`HOST_POINTS`) are single chains run by the worker itself. docs/hooks.md maps every VDSM point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

PayloadKind = Literal["domxml", "devicexml", "json"]
Phase = Literal["before", "after", "after_fail"]


@dataclass(frozen=True)
class HookPoint:
    """One hook directory: `before_vm_start`, `after_disk_hotplug_fail`, ..."""

    name: str
    payload: PayloadKind
    aborts: bool
    base: str = ""
    phase: Phase = "before"

    @property
    def is_xml(self) -> bool:
        return self.payload != "json"

    @property
    def env_var(self) -> str:
        """The variable naming the payload file, as in VDSM."""
        return "_hook_json" if self.payload == "json" else "_hook_domxml"


# (base point, payload kind, origin). VDSM's names first, then the points VDSM lacks.
BASE_POINTS: tuple[tuple[str, PayloadKind, str], ...] = (
    ("vm_start", "domxml", "vdsm"),
    ("vm_cont", "domxml", "vdsm"),
    ("vm_pause", "domxml", "vdsm"),
    ("vm_destroy", "domxml", "vdsm"),
    ("vm_migrate_source", "domxml", "vdsm"),
    ("vm_migrate_destination", "domxml", "vdsm"),
    ("vm_hibernate", "domxml", "vdsm"),
    ("vm_dehibernate", "domxml", "vdsm"),
    ("vm_set_ticket", "domxml", "vdsm"),
    ("device_create", "devicexml", "vdsm"),
    ("device_destroy", "devicexml", "vdsm"),
    ("device_migrate_destination", "devicexml", "vdsm"),
    ("update_device", "devicexml", "vdsm"),
    ("nic_hotplug", "devicexml", "vdsm"),
    ("nic_hotunplug", "devicexml", "vdsm"),
    ("disk_hotplug", "devicexml", "vdsm"),
    ("disk_hotunplug", "devicexml", "vdsm"),
    ("memory_hotplug", "devicexml", "vdsm"),
    ("set_num_of_cpus", "domxml", "vdsm"),
    ("vm_define", "domxml", "vmworker"),
    ("vm_undefine", "domxml", "vmworker"),
    ("vm_shutdown", "domxml", "vmworker"),
    ("vm_reboot", "domxml", "vmworker"),
    ("vmworker_start", "json", "vmworker"),
    ("vmworker_stop", "json", "vmworker"),
)


# before_* chains that only report: a device hook may not keep a VM from being destroyed
REPORT_ONLY = frozenset({"before_device_destroy"})

# Host points VDSM has and the worker runs as one chain each, not as a before/after pair:
# (name, payload kind, what runs it). A failing one is logged, never fatal (as in VDSM).
HOST_POINTS: tuple[tuple[str, PayloadKind, str], ...] = (
    ("after_get_caps", "json", "every heartbeat, over its inventory"),
    ("before_vdsm_start", "json", "worker start, after before_vmworker_start"),
    ("after_vdsm_stop", "json", "worker stop, after after_vmworker_stop"),
)

# A host chain and the VDSM chains that run right after it, as its aliases.
ALIASES: Mapping[str, tuple[str, ...]] = {
    "before_vmworker_start": ("before_vdsm_start",),
    "after_vmworker_stop": ("after_vdsm_stop",),
}


def _chains(base: str, payload: PayloadKind) -> tuple[HookPoint, ...]:
    before = f"before_{base}"
    return (
        HookPoint(before, payload, before not in REPORT_ONLY, base, "before"),
        HookPoint(f"after_{base}", payload, False, base, "after"),
        HookPoint(f"after_{base}_fail", payload, False, base, "after_fail"),
    )


def _host_point(name: str, payload: PayloadKind) -> HookPoint:
    phase, _, base = name.partition("_")
    return HookPoint(name, payload, False, base, "before" if phase == "before" else "after")


POINTS: Mapping[str, HookPoint] = {
    **{p.name: p for base, kind, _ in BASE_POINTS for p in _chains(base, kind)},
    **{name: _host_point(name, kind) for name, kind, _ in HOST_POINTS},
}


def get_point(name: str) -> HookPoint:
    """The point called `name`; ValueError for a path-like or unknown name."""
    if not isinstance(name, str) or "/" in name or ".." in name or "\0" in name:
        raise ValueError(f"invalid hook point name {name!r}")
    try:
        return POINTS[name]
    except KeyError:
        raise ValueError(f"unknown hook point {name!r}") from None
