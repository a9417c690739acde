"""Device operations on a defined (usually running) domain: disks, NICs, cdrom media and NIC
link/QoS updates, vCPUs and memory. The hook payload is the device's XML, as in VDSM.

`params.live` (default: when the domain is running) and `params.persistent` (default: true)
say whether the live domain, its persistent definition, or both are changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import libvirt
from lxml import etree

from handlers.base import Ctx, Handler, register
from handlers.domxml import build_disk_xml, build_nic_xml, stable_mac
from handlers.errors import OpError, validation
from handlers.spec import BandwidthSpec, NicSpec
from handlers.storage import check_path_under_roots, next_disk_target

RUNNING = {"running", "paused", "blocked"}


def _flags(ctx: Ctx) -> int:
    p = ctx.op.params
    live = p.live if p.live is not None else ctx.state() in RUNNING
    flags = 0
    if live:
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    if p.persistent and ctx.domain().isPersistent():
        flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if not flags:
        raise validation("params: neither live (domain not running) nor persistent", "no_target")
    return flags


def _trees(ctx: Ctx, flags: int) -> list[etree._Element]:
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
def _disk_target(ctx: Ctx) -> str:
    disk = ctx.op.params.disk
    if disk.target:
        return str(disk.target)
    if "target" not in ctx.notes:
        used: set[str] = set()
        for tree in _trees(ctx, libvirt.VIR_DOMAIN_AFFECT_LIVE | _config_if_persistent(ctx)):
            used |= _strings(tree, "devices/disk/target/@dev")
        ctx.notes["target"] = next_disk_target(disk.bus, used)
    return str(ctx.notes["target"])


def _config_if_persistent(ctx: Ctx) -> int:
    return libvirt.VIR_DOMAIN_AFFECT_CONFIG if ctx.domain().isPersistent() else 0


def _attach_disk_prepare(ctx: Ctx) -> str:
    return build_disk_xml(ctx.op.params.disk, _disk_target(ctx), storage_roots=ctx.storage_roots)


def _attach(ctx: Ctx, xml: str) -> None:
    ctx.domain().attachDeviceFlags(xml, _flags(ctx))


def _has_disk(ctx: Ctx, target: str) -> bool:
    trees = _trees(ctx, _flags(ctx))
    return all(_find(t, f"devices/disk[target/@dev='{target}']") is not None for t in trees)


def _no_disk(ctx: Ctx, target: str) -> bool:
    trees = _trees(ctx, _flags(ctx))
    return all(_find(t, f"devices/disk[target/@dev='{target}']") is None for t in trees)


register(
    Handler(
        "attach_disk",
        "disk_hotplug",
        prepare=_attach_disk_prepare,
        execute=_attach,
        done=lambda ctx: (
            bool(ctx.op.params.disk.target) and _has_disk(ctx, ctx.op.params.disk.target)
        ),
        device=True,
    )
)


def _device_xml(ctx: Ctx, xpath: str, what: str) -> str:
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


def _detach_and_wait(xpath: str, what: str) -> Callable[[Ctx, str], None]:
    """Detach, then wait until the device has left the live domain: a PCI device goes only
    when the guest OS acknowledges the unplug, and libvirt reports success before that."""

    def execute(ctx: Ctx, xml: str) -> None:
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


def _detach_disk_prepare(ctx: Ctx) -> str:
    t = ctx.op.params.target
    return _device_xml(ctx, f"devices/disk[target/@dev='{t}']", f"disk {t}")


register(
    Handler(
        "detach_disk",
        "disk_hotunplug",
        prepare=_detach_disk_prepare,
        execute=_detach_and_wait("devices/disk[target/@dev='{p.target}']", "disk {p.target}"),
        done=lambda ctx: _no_disk(ctx, ctx.op.params.target),
        device=True,
    )
)


# -- NICs ------------------------------------------------------------------------------
def _nic_xpath(mac: str) -> str:
    return f"devices/interface[mac/@address='{mac.lower()}']"


def _attach_nic_prepare(ctx: Ctx) -> str:
    nic = ctx.op.params.nic
    mac = nic.mac
    if mac is None:  # the next stable MAC of this VM that no NIC uses
        used: set[str] = set()
        for tree in _trees(ctx, _flags(ctx)):
            used |= _strings(tree, "devices/interface/mac/@address")
        mac = next(m for i in range(4096) if (m := stable_mac(ctx.uuid, i)) not in used)
    ctx.notes["mac"] = mac
    return build_nic_xml(nic, mac=mac)


def _nic_present(ctx: Ctx, mac: str) -> list[bool]:
    return [_find(t, _nic_xpath(mac)) is not None for t in _trees(ctx, _flags(ctx))]


register(
    Handler(
        "attach_nic",
        "nic_hotplug",
        prepare=_attach_nic_prepare,
        execute=_attach,
        done=lambda ctx: (
            bool(ctx.op.params.nic.mac) and all(_nic_present(ctx, str(ctx.op.params.nic.mac)))
        ),
        device=True,
    )
)


def _detach_nic_prepare(ctx: Ctx) -> str:
    mac = ctx.op.params.mac
    return _device_xml(ctx, _nic_xpath(mac), f"NIC {mac}")


register(
    Handler(
        "detach_nic",
        "nic_hotunplug",
        prepare=_detach_nic_prepare,
        execute=_detach_and_wait("devices/interface[mac/@address='{p.mac}']", "NIC {p.mac}"),
        done=lambda ctx: not any(_nic_present(ctx, ctx.op.params.mac)),
        device=True,
    )
)


# -- update_device: cdrom media, NIC link state and QoS -------------------------------
def _update_prepare(ctx: Ctx) -> str:
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


def _update(ctx: Ctx, xml: str) -> None:
    ctx.domain().updateDeviceFlags(xml, _flags(ctx))


register(
    Handler("update_device", "update_device", prepare=_update_prepare, execute=_update, device=True)
)


# -- vCPUs and memory ------------------------------------------------------------------
def _domain_xml(ctx: Ctx) -> str:
    return ctx.current_xml()


def _set_vcpus(ctx: Ctx, _xml: str) -> None:
    ctx.domain().setVcpusFlags(ctx.op.params.count, _flags(ctx))


def _vcpus_done(ctx: Ctx) -> bool:
    flags = _flags(ctx)
    dom = ctx.domain()
    want = ctx.op.params.count
    checks = []
    if flags & libvirt.VIR_DOMAIN_AFFECT_LIVE:
        checks.append(dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == want)
    if flags & libvirt.VIR_DOMAIN_AFFECT_CONFIG:
        checks.append(dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == want)
    return all(checks)


register(
    Handler(
        "set_vcpus", "set_num_of_cpus", prepare=_domain_xml, execute=_set_vcpus, done=_vcpus_done
    )
)


def _total_mib(tree: etree._Element) -> int:
    mem = tree.find("memory")
    assert mem is not None
    unit = mem.get("unit", "KiB")
    kib = int(mem.text or 0) * {"KiB": 1, "MiB": 1024, "GiB": 1024 * 1024, "b": 1}.get(unit, 1)
    return kib // 1024


def _memory_prepare(ctx: Ctx) -> str:
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


def _set_memory(ctx: Ctx, xml: str) -> None:
    el = etree.fromstring(xml.encode())
    if el.tag == "currentMemory":
        ctx.domain().setMemoryFlags(int(el.text or 0) * 1024, _flags(ctx))
    else:
        ctx.domain().attachDeviceFlags(xml, _flags(ctx))


register(
    Handler(
        "set_memory", "memory_hotplug", prepare=_memory_prepare, execute=_set_memory, device=True
    )
)
