"""Device operations on a defined (usually running) domain: disks, NICs, cdrom media and NIC
link/QoS updates, vCPUs and memory, each declared here with its message model. The hook
payload is the device's XML, as in VDSM.

`params.live` (default: when the domain is running) and `params.persistent` (default: true)
say whether the live domain, its persistent definition, or both are changed. Asking for the live
domain of a VM that is not running fails with `bad_state` (handlers/states.py), before any hook.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Literal

import libvirt
from lxml import etree
from pydantic import Field, field_validator

from handlers.base import Ctx, Operation, declare
from handlers.domxml import build_disk_xml, build_nic_xml, stable_mac
from handlers.errors import OpError, validation
from handlers.message import OpMessage, Strict
from handlers.spec import BandwidthSpec, DiskSpec, NicSpec
from handlers.states import require_state
from handlers.storage import check_path_under_roots, next_disk_target

RUNNING = {"running", "paused", "blocked"}
MAC_PATTERN = r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$"


# -- messages --------------------------------------------------------------------------
class _DeviceParams(Strict):
    live: bool | None = Field(None, description="change the running domain (default: if running)")
    persistent: bool = Field(True, description="change the persistent definition too")


class AttachDiskParams(_DeviceParams):
    disk: DiskSpec


class _DetachParams(_DeviceParams):
    wait_s: float = Field(10.0, gt=0, le=600, description="how long the guest may take to let go")


class DetachDiskParams(_DetachParams):
    target: str = Field(pattern=r"^(vd|sd|hd)[a-z]{1,3}$", description="guest device, e.g. vdb")


class AttachNicParams(_DeviceParams):
    nic: NicSpec


class DetachNicParams(_DetachParams):
    mac: str = Field(pattern=MAC_PATTERN)

    @field_validator("mac")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


class UpdateCdromParams(_DeviceParams):
    device: Literal["cdrom"]
    target: str = Field(pattern=r"^(sd|hd)[a-z]{1,3}$")
    path: str | None = Field(None, description="ISO to insert; null ejects the media")


class UpdateNicParams(_DeviceParams):
    device: Literal["nic"]
    mac: str = Field(pattern=MAC_PATTERN)
    link_state: Literal["up", "down"] | None = None
    bandwidth: BandwidthSpec | None = None


class SetVcpusParams(_DeviceParams):
    count: int = Field(ge=1, le=255)  # the spec caps max_vcpus at 255


class SetMemoryParams(_DeviceParams):
    memory_mib: int = Field(
        ge=16, le=16 * 1024 * 1024, description="the new total; growing hotplugs a DIMM"
    )
    node: int = Field(0, ge=0, le=255, description="guest NUMA node of a hotplugged DIMM")


class _DeviceOp(OpMessage):
    """An op with `live` and `persistent` params (what `_flags` reads)."""

    params: _DeviceParams  # type: ignore[assignment]


class _DetachOp(_DeviceOp):
    params: _DetachParams


class AttachDisk(_DeviceOp):
    op: Literal["attach_disk"]
    params: AttachDiskParams


class DetachDisk(_DetachOp):
    op: Literal["detach_disk"]
    params: DetachDiskParams


class AttachNic(_DeviceOp):
    op: Literal["attach_nic"]
    params: AttachNicParams


class DetachNic(_DetachOp):
    op: Literal["detach_nic"]
    params: DetachNicParams


class UpdateDevice(_DeviceOp):
    op: Literal["update_device"]
    params: Annotated[UpdateCdromParams | UpdateNicParams, Field(discriminator="device")]


class SetVcpus(_DeviceOp):
    op: Literal["set_vcpus"]
    params: SetVcpusParams


class SetMemory(_DeviceOp):
    op: Literal["set_memory"]
    params: SetMemoryParams


def _flags(ctx: Ctx[_DeviceOp]) -> int:
    p = ctx.op.params
    state = ctx.state()
    require_state(ctx, state)  # no domain, or the live domain asked of a VM that is not running
    live = p.live if p.live is not None else state in RUNNING
    flags = 0
    if live:
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    if p.persistent and ctx.domain().isPersistent():
        flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if not flags:
        raise validation("params: neither live (domain not running) nor persistent", "no_target")
    return flags


def _trees(ctx: Ctx[OpMessage], flags: int) -> list[etree._Element]:
    """The domain XML trees the op changes: live and/or persistent."""
    dom = ctx.domain()
    out = []
    if flags & libvirt.VIR_DOMAIN_AFFECT_LIVE:
        out.append(etree.fromstring(dom.XMLDesc(0).encode()))
    if flags & libvirt.VIR_DOMAIN_AFFECT_CONFIG:
        out.append(etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode()))
    return out


def _find(tree: etree._Element, xpath: str) -> etree._Element | None:
    found = tree.xpath(xpath)
    return found[0] if isinstance(found, list) and found else None  # type: ignore[return-value]


def _strings(tree: etree._Element, xpath: str) -> set[str]:
    found = tree.xpath(xpath)
    return {str(x).lower() for x in found} if isinstance(found, list) else set()


def _text(el: etree._Element) -> str:
    return etree.tostring(el, encoding="unicode")


# -- disks -----------------------------------------------------------------------------
def _disk_target(ctx: Ctx[AttachDisk]) -> str:
    disk = ctx.op.params.disk
    if disk.target:
        return str(disk.target)
    if "target" not in ctx.notes:
        used: set[str] = set()
        for tree in _trees(ctx, libvirt.VIR_DOMAIN_AFFECT_LIVE | _config_if_persistent(ctx)):
            used |= _strings(tree, "devices/disk/target/@dev")
        ctx.notes["target"] = next_disk_target(disk.bus, used)
    return str(ctx.notes["target"])


def _config_if_persistent(ctx: Ctx[OpMessage]) -> int:
    return libvirt.VIR_DOMAIN_AFFECT_CONFIG if ctx.domain().isPersistent() else 0


def _attach_disk_prepare(ctx: Ctx[AttachDisk]) -> str:
    require_state(ctx)  # the state check, before the before_* chain
    return build_disk_xml(ctx.op.params.disk, _disk_target(ctx), storage_roots=ctx.storage_roots)


def _attach(ctx: Ctx[_DeviceOp], xml: str) -> None:
    ctx.domain().attachDeviceFlags(xml, _flags(ctx))


def _has_disk(ctx: Ctx[_DeviceOp], target: str) -> bool:
    trees = _trees(ctx, _flags(ctx))
    return all(_find(t, f"devices/disk[target/@dev='{target}']") is not None for t in trees)


def _no_disk(ctx: Ctx[_DeviceOp], target: str) -> bool:
    trees = _trees(ctx, _flags(ctx))
    return all(_find(t, f"devices/disk[target/@dev='{target}']") is None for t in trees)


def _attach_disk_done(ctx: Ctx[AttachDisk]) -> bool:
    target = ctx.op.params.disk.target
    return bool(target) and _has_disk(ctx, str(target))


declare(
    Operation(
        AttachDisk,
        point="disk_hotplug",
        payload="devicexml",
        expects=("defined",),
        prepare=_attach_disk_prepare,
        execute=_attach,
        done=_attach_disk_done,
        device_custom=lambda op: op.params.disk.custom,
    )
)


def _device_xml(ctx: Ctx[_DeviceOp], xpath: str, what: str) -> str:
    """The current XML of one device, from the live domain if it runs, else its definition."""
    for tree in _trees(ctx, _flags(ctx)):
        el = _find(tree, xpath)
        if el is not None:
            return _text(el)
    raise OpError(
        "no_device",
        f"{what} not found on domain {ctx.uuid}",
        "libvirt",
        libvirt_code=libvirt.VIR_ERR_DEVICE_MISSING,
    )


def _detach_and_wait(xpath: str, what: str) -> Callable[[Ctx[_DetachOp], str], None]:
    """Detach, then wait until the device has left the live domain: a PCI device goes only
    when the guest OS acknowledges the unplug, and libvirt reports success before that."""

    def execute(ctx: Ctx[_DetachOp], xml: str) -> None:
        flags = _flags(ctx)
        dom = ctx.domain()
        dom.detachDeviceFlags(xml, flags)
        if not flags & libvirt.VIR_DOMAIN_AFFECT_LIVE:
            return
        path = xpath.format(p=ctx.op.params)
        deadline = time.monotonic() + ctx.op.params.wait_s
        while _find(etree.fromstring(dom.XMLDesc(0).encode()), path) is not None:
            if time.monotonic() > deadline:
                raise OpError(
                    "unplug_pending",
                    f"the guest has not released {what.format(p=ctx.op.params)} after"
                    f" {ctx.op.params.wait_s:g}s; libvirt removes it when the guest OS"
                    " acknowledges the unplug",
                    "libvirt",
                )
            time.sleep(0.1)

    return execute


def _detach_disk_prepare(ctx: Ctx[DetachDisk]) -> str:
    t = ctx.op.params.target
    return _device_xml(ctx, f"devices/disk[target/@dev='{t}']", f"disk {t}")


declare(
    Operation(
        DetachDisk,
        point="disk_hotunplug",
        payload="devicexml",
        expects=("defined",),
        prepare=_detach_disk_prepare,
        execute=_detach_and_wait("devices/disk[target/@dev='{p.target}']", "disk {p.target}"),
        done=lambda ctx: _no_disk(ctx, ctx.op.params.target),
    )
)


# -- NICs ------------------------------------------------------------------------------
def _nic_xpath(mac: str) -> str:
    return f"devices/interface[mac/@address='{mac.lower()}']"


def _attach_nic_prepare(ctx: Ctx[AttachNic]) -> str:
    require_state(ctx)  # the state check, before the before_* chain
    nic = ctx.op.params.nic
    mac = nic.mac
    if mac is None:  # the next stable MAC of this VM that no NIC uses
        used: set[str] = set()
        for tree in _trees(ctx, _flags(ctx)):
            used |= _strings(tree, "devices/interface/mac/@address")
        mac = next(m for i in range(4096) if (m := stable_mac(ctx.uuid, i)) not in used)
    ctx.notes["mac"] = mac
    return build_nic_xml(nic, mac=mac)


def _nic_present(ctx: Ctx[_DeviceOp], mac: str) -> list[bool]:
    return [_find(t, _nic_xpath(mac)) is not None for t in _trees(ctx, _flags(ctx))]


declare(
    Operation(
        AttachNic,
        point="nic_hotplug",
        payload="devicexml",
        expects=("defined",),
        prepare=_attach_nic_prepare,
        execute=_attach,
        done=lambda ctx: (
            bool(ctx.op.params.nic.mac) and all(_nic_present(ctx, str(ctx.op.params.nic.mac)))
        ),
        device_custom=lambda op: op.params.nic.custom,
    )
)


def _detach_nic_prepare(ctx: Ctx[DetachNic]) -> str:
    mac = ctx.op.params.mac
    return _device_xml(ctx, _nic_xpath(mac), f"NIC {mac}")


declare(
    Operation(
        DetachNic,
        point="nic_hotunplug",
        payload="devicexml",
        expects=("defined",),
        prepare=_detach_nic_prepare,
        execute=_detach_and_wait("devices/interface[mac/@address='{p.mac}']", "NIC {p.mac}"),
        done=lambda ctx: not any(_nic_present(ctx, ctx.op.params.mac)),
    )
)


# -- update_device: cdrom media, NIC link state and QoS -------------------------------
def _update_prepare(ctx: Ctx[UpdateDevice]) -> str:
    p = ctx.op.params
    if p.device == "cdrom":
        xml = _device_xml(
            ctx, f"devices/disk[@device='cdrom'][target/@dev='{p.target}']", f"cdrom {p.target}"
        )
        el = etree.fromstring(xml.encode())
        for src in el.findall("source"):
            el.remove(src)
        if p.path is not None:
            path = str(p.path)
            if ctx.storage_roots is not None:
                path = str(check_path_under_roots(path, ctx.storage_roots))
            el.insert(0, etree.Element("source", file=path))
        return _text(el)
    xml = _device_xml(ctx, _nic_xpath(p.mac), f"NIC {p.mac}")
    el = etree.fromstring(xml.encode())
    if p.link_state is not None:
        link = el.find("link")
        if link is None:
            link = etree.SubElement(el, "link")
        link.set("state", p.link_state)
    if p.bandwidth is not None:
        old = el.find("bandwidth")
        if old is not None:
            el.remove(old)
        bw = etree.fromstring(build_nic_xml(_bandwidth_only(p.bandwidth)).encode()).find(
            "bandwidth"
        )
        if bw is not None:
            el.append(bw)
    return _text(el)


def _bandwidth_only(bandwidth: BandwidthSpec) -> NicSpec:
    return NicSpec(source="x", mac="52:54:00:00:00:00", bandwidth=bandwidth)


def _update(ctx: Ctx[UpdateDevice], xml: str) -> None:
    ctx.domain().updateDeviceFlags(xml, _flags(ctx))


declare(
    Operation(
        UpdateDevice,
        point="update_device",
        payload="devicexml",
        expects=("defined",),
        prepare=_update_prepare,
        execute=_update,
    )
)


# -- vCPUs and memory ------------------------------------------------------------------
def _domain_xml(ctx: Ctx[OpMessage]) -> str:
    require_state(ctx)  # the state check, before the before_* chain
    return ctx.current_xml()


def _set_vcpus(ctx: Ctx[SetVcpus], _xml: str) -> None:
    ctx.domain().setVcpusFlags(ctx.op.params.count, _flags(ctx))


def _vcpus_done(ctx: Ctx[SetVcpus]) -> bool:
    flags = _flags(ctx)
    dom = ctx.domain()
    want = ctx.op.params.count
    checks = []
    if flags & libvirt.VIR_DOMAIN_AFFECT_LIVE:
        checks.append(dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == want)
    if flags & libvirt.VIR_DOMAIN_AFFECT_CONFIG:
        checks.append(dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == want)
    return all(checks)


declare(
    Operation(
        SetVcpus,
        point="set_num_of_cpus",
        payload="domxml",
        expects=("defined",),
        prepare=_domain_xml,
        execute=_set_vcpus,
        done=_vcpus_done,
    )
)


def _total_mib(tree: etree._Element) -> int:
    mem = tree.find("memory")
    assert mem is not None
    unit = mem.get("unit", "KiB")
    kib = int(mem.text or 0) * {"KiB": 1, "MiB": 1024, "GiB": 1024 * 1024, "b": 1}.get(unit, 1)
    return kib // 1024


def _memory_prepare(ctx: Ctx[SetMemory]) -> str:
    """Growing memory hotplugs one DIMM of the difference (VDSM's memory_hotplug); the hook
    payload is that `<memory model='dimm'>` device. Shrinking uses the balloon."""
    (tree, *_) = _trees(ctx, _flags(ctx))
    current = _total_mib(tree)
    want = ctx.op.params.memory_mib
    ctx.notes["memory_before_mib"] = current
    if want <= current:
        cur = etree.Element("currentMemory", unit="MiB")
        cur.text = str(want)
        return _text(cur)
    if tree.find("maxMemory") is None:
        raise validation(
            "memory_mib: the domain has no max memory (spec.max_memory_mib) to grow into",
            "no_hotplug",
            field="params.memory_mib",
        )
    dimm = etree.Element("memory", model="dimm")
    target = etree.SubElement(dimm, "target")
    etree.SubElement(target, "size", unit="MiB").text = str(want - current)
    etree.SubElement(target, "node").text = str(ctx.op.params.node)
    return _text(dimm)


def _set_memory(ctx: Ctx[SetMemory], xml: str) -> None:
    el = etree.fromstring(xml.encode())
    if el.tag == "currentMemory":
        ctx.domain().setMemoryFlags(int(el.text or 0) * 1024, _flags(ctx))
    else:
        ctx.domain().attachDeviceFlags(xml, _flags(ctx))


declare(
    Operation(
        SetMemory,
        point="memory_hotplug",
        payload="devicexml",
        expects=("defined",),
        prepare=_memory_prepare,
        execute=_set_memory,
    )
)
