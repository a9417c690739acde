"""Composition: each section function called once, in one place, in document order."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lxml import etree

from handlers.domxml import (
    balloon,
    boot,
    channels,
    clock,
    consoles,
    controllers,
    cpu,
    devices,
    disks,
    features,
    general,
    graphics,
    hostdevs,
    memory,
    nics,
    raw,
    rng,
    usbredir,
    watchdog,
)
from handlers.errors import validation
from handlers.spec import DiskSpec, NicSpec, VmSpec, check_target
from handlers.storage import assign_targets, check_path_under_roots

Roots = Sequence[str | os.PathLike[str]] | None
DOMAIN_TYPES = ("kvm", "qemu")


def default_domain_type() -> str:
    """`kvm` where /dev/kvm exists, else `qemu` (TCG)."""
    return "kvm" if Path("/dev/kvm").exists() else "qemu"


def to_string(el: etree._Element) -> str:
    return etree.tostring(el, pretty_print=True, encoding="unicode")


def _resolve(path: str | None, roots: Roots, field: str) -> str | None:
    """`path` itself without roots; else its resolved form, if it lies under one of them."""
    if path is None or roots is None:
        return path
    return str(check_path_under_roots(path, roots, field=field))


def _disk_element(d: DiskSpec, target: str, roots: Roots, field: str) -> etree._Element:
    path = _resolve(d.path, roots, f"{field}.path") if d.type == "file" else d.path
    fmt = disks.disk_format(d, path)
    if d.shareable and fmt == "qcow2":
        raise validation(
            f"{field}.format: shareable disk {path} is qcow2; a shared disk must be raw",
            field=f"{field}.format",
        )
    return disks.disk(d, target, path=path, fmt=fmt)


Customs = list[tuple[etree._Element, dict[str, str]]]


def _devices(spec: VmSpec, roots: Roots, customs: Customs) -> etree._Element:
    """`<devices>`; each device a spec entry made is added to `customs` with its `custom`."""

    def add(el: etree._Element, custom: dict[str, str]) -> None:
        devs.append(el)
        customs.append((el, custom))

    devs = etree.Element("devices")
    if spec.emulator is not None:
        etree.SubElement(devs, "emulator").text = spec.emulator
    drives = [(d.bus, d.target) for d in spec.disks] + [(c.bus, c.target) for c in spec.cdroms]
    targets = assign_targets(drives)
    for i, d in enumerate(spec.disks):
        add(_disk_element(d, targets[i], roots, f"disks[{i}]"), d.custom)
    for i, c in enumerate(spec.cdroms):
        path = _resolve(c.path, roots, f"cdroms[{i}].path")
        add(disks.cdrom(c, targets[len(spec.disks) + i], path=path), c.custom)
    devs.extend(controllers.usb(spec.controllers.usb))
    wants_scsi = any(bus == "virtio-scsi" for bus, _ in drives)
    if spec.controllers.virtio_scsi or (spec.controllers.virtio_scsi is None and wants_scsi):
        devs.append(controllers.virtio_scsi(spec.controllers.virtio_scsi_queues))
    for i, n in enumerate(spec.nics):
        add(nics.interface(n, nics.stable_mac(spec.uuid, i)), n.custom)
    for p in spec.pci_devices:
        add(hostdevs.pci(p), p.custom)
    for u in spec.usb_devices:
        add(hostdevs.usb(u), u.custom)
    if spec.graphics is not None:
        devs.append(graphics.graphics(spec.graphics))
    video = spec.video or (graphics.default_video(spec.graphics) if spec.graphics else None)
    if video is not None:
        devs.extend(graphics.video(video))
    if spec.sound is not None:
        devs.append(graphics.sound(spec.sound))
    if spec.graphics is not None:
        devs.append(graphics.tablet("virtio" if spec.controllers.usb == "none" else "usb"))
    devs.extend(usbredir.redirdevs(spec.usb_redirect))
    if spec.serial_console:
        devs.extend(consoles.serial_console())
    if spec.guest_agent:
        devs.append(channels.guest_agent())
    if spec.graphics is not None and spec.graphics.type == "spice":
        devs.append(channels.spice_agent())
    devs.extend(channels.unix_channel(ch.name, ch.path) for ch in spec.channels)
    if spec.watchdog is not None:
        devs.append(watchdog.watchdog(spec.watchdog))
    if spec.rng is not None:
        devs.append(rng.rng(spec.rng))
    if spec.panic is not None:
        devs.append(watchdog.panic(spec.panic))
    devs.append(balloon.memballoon(spec.balloon))
    return devs


def _append(root: etree._Element, el: etree._Element | None) -> None:
    if el is not None:
        root.append(el)


def domain_tree(
    spec: VmSpec,
    *,
    domain_type: str | None = None,
    storage_roots: Roots = None,
    allow_raw: bool = False,
) -> etree._Element:
    """The `<domain>` element for `spec` (see `build_domain_xml`)."""
    if spec.raw_xml is not None and not allow_raw:
        raise validation(
            "raw_xml: raw XML passthrough is not allowed on this host",
            code="raw_xml_not_allowed",
            field="raw_xml",
        )
    dtype = domain_type or spec.domain_type or default_domain_type()
    if dtype not in DOMAIN_TYPES:
        raise validation(f"domain_type: {dtype!r} is not kvm or qemu", field="domain_type")
    root = etree.Element("domain", type=dtype)
    root.extend(general.identity(spec))
    root.append(general.metadata(spec))
    root.extend(memory.memory(spec))
    _append(root, memory.memory_backing(spec))
    root.append(cpu.vcpu(spec))
    _append(root, cpu.cputune(spec))
    root.append(
        boot.os_section(
            spec.os,
            loader=_resolve(spec.os.loader, storage_roots, "os.loader"),
            nvram=_resolve(spec.os.nvram, storage_roots, "os.nvram"),
            nvram_template=_resolve(spec.os.nvram_template, storage_roots, "os.nvram_template"),
        )
    )
    root.append(features.features(spec.features, smm=spec.os.secure_boot))
    _append(root, cpu.cpu(spec))
    root.append(clock.clock(spec.clock))
    root.extend(general.lifecycle(spec))
    customs: Customs = []
    root.append(_devices(spec, storage_roots, customs))
    stored = devices.custom_metadata([(devices.device_key(el) or "", c) for el, c in customs])
    if stored is not None:
        root.find("metadata").append(stored)  # type: ignore[union-attr]
    if spec.raw_xml is not None:
        raw.merge(root, spec.raw_xml)
    return root


def build_domain_xml(
    spec: VmSpec,
    *,
    domain_type: str | None = None,
    storage_roots: Roots = None,
    allow_raw: bool = False,
) -> str:
    """The libvirt domain XML for `spec`, deterministic (same spec and files, same bytes).

    `domain_type` overrides `spec.domain_type`, which overrides `default_domain_type()`.
    `storage_roots`: None checks nothing; a list requires every file disk, CD-ROM image,
    UEFI loader and NVRAM path to resolve (symlinks followed, no `..`) under one of them, and
    the resolved path is what goes into the XML. `allow_raw` permits `spec.raw_xml`.
    Raises OpError(source="validation") naming the field.
    """
    tree = domain_tree(
        spec, domain_type=domain_type, storage_roots=storage_roots, allow_raw=allow_raw
    )
    return to_string(tree)


def build_disk_xml(disk: DiskSpec, target_dev: str, *, storage_roots: Roots = None) -> str:
    """The `<disk>` XML for hotplugging `disk` as `target_dev` (see `next_disk_target`)."""
    try:
        check_target(target_dev, disk.bus)
    except ValueError as e:
        raise validation(f"target_dev: {e}".replace("target: ", ""), field="target_dev") from None
    return to_string(_disk_element(disk, target_dev, storage_roots, "disk"))


def build_nic_xml(nic: NicSpec, *, mac: str | None = None) -> str:
    """The `<interface>` XML for hotplugging `nic`; `mac` is used when the spec has none.

    Pass `stable_mac(vm_uuid, index)` to get the MAC the NIC would have in `build_domain_xml`.
    """
    return to_string(nics.interface(nic, mac))
