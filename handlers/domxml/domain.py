"""Composition: every section function called once, in one place, in document order."""

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
    cpu,
    disks,
    features,
    general,
    graphics,
    memory,
    nics,
)
from handlers.spec import DiskSpec, NicSpec, VmSpec
from handlers.storage import next_disk_target

Roots = Sequence[str | os.PathLike[str]] | None


def default_domain_type() -> str:
    """`kvm` where /dev/kvm exists, else `qemu` (TCG)."""
    return "kvm" if Path("/dev/kvm").exists() else "qemu"


def to_string(el: etree._Element) -> str:
    return etree.tostring(el, pretty_print=True, encoding="unicode")


def domain_tree(
    spec: VmSpec,
    *,
    domain_type: str | None = None,
    storage_roots: Roots = None,
    allow_raw: bool = False,
) -> etree._Element:
    """The `<domain>` element for `spec` (see `build_domain_xml`)."""
    dtype = domain_type or spec.domain_type or default_domain_type()
    root = etree.Element("domain", type=dtype)
    root.extend(general.identity(spec))
    root.append(general.metadata(spec))
    root.append(cpu.vcpu(spec))
    root.extend(memory.memory(spec))
    root.append(boot.os_section(spec))
    root.append(features.features(spec))
    root.append(clock.clock(spec))
    root.extend(general.lifecycle(spec))
    devices = etree.SubElement(root, "devices")
    used: set[str] = set()
    for d in spec.disks:
        target = next_disk_target(d.bus, used)
        used.add(target)
        devices.append(disks.disk(d, target))
    for c in spec.cdroms:
        target = next_disk_target("sata", used)
        used.add(target)
        devices.append(disks.cdrom(c, target))
    for i, n in enumerate(spec.nics):
        devices.append(nics.interface(n, nics.stable_mac(spec.uuid, i)))
    if spec.graphics is not None:
        devices.append(graphics.graphics(spec.graphics))
        devices.append(graphics.video(spec.graphics))
        devices.append(graphics.tablet(spec.graphics))
    if spec.serial_console:
        devices.extend(consoles.serial_console())
    if spec.guest_agent:
        devices.append(channels.unix_channel(channels.GUEST_AGENT))
    devices.append(balloon.memballoon())
    return root


def build_domain_xml(
    spec: VmSpec,
    *,
    domain_type: str | None = None,
    storage_roots: Roots = None,
    allow_raw: bool = False,
) -> str:
    """The libvirt domain XML for `spec`, deterministic (same spec, same bytes).

    `domain_type` overrides `spec.domain_type`, which overrides `default_domain_type()`.
    `storage_roots`: None checks nothing; a list requires every file path to resolve under one
    of them. `allow_raw` permits `spec.raw_xml`. Raises OpError(source="validation").
    """
    return to_string(
        domain_tree(spec, domain_type=domain_type, storage_roots=storage_roots, allow_raw=allow_raw)
    )


def build_disk_xml(disk: DiskSpec, target_dev: str, *, storage_roots: Roots = None) -> str:
    """The `<disk>` XML for hotplugging `disk` as `target_dev`."""
    return to_string(disks.disk(disk, target_dev))


def build_nic_xml(nic: NicSpec, *, mac: str | None = None) -> str:
    """The `<interface>` XML for hotplugging `nic` (libvirt picks a MAC if neither is set)."""
    return to_string(nics.interface(nic, mac))
