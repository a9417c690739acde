"""Passthrough `<hostdev>` elements: PCI (VFIO) and USB."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, onoff, sub, yesno
from handlers.spec import PciHostdevSpec, UsbHostdevSpec


def pci(spec: PciHostdevSpec) -> etree._Element:
    domain, bus, rest = spec.address.split(":")
    slot, function = rest.split(".")
    el = element("hostdev", mode="subsystem", type="pci", managed=yesno(spec.managed))
    sub(el, "driver", name="vfio")
    src = sub(el, "source")
    sub(
        src,
        "address",
        domain=f"0x{domain}",
        bus=f"0x{bus}",
        slot=f"0x{slot}",
        function=f"0x{function}",
    )
    if spec.rom_bar is not None:
        sub(el, "rom", bar=onoff(spec.rom_bar))
    if spec.boot_order is not None:
        sub(el, "boot", order=spec.boot_order)
    return el


def usb(spec: UsbHostdevSpec) -> etree._Element:
    """A USB device; with `usb_version` it goes on that version's controller (bus N-1)."""
    el = element("hostdev", mode="subsystem", type="usb", managed="yes")
    src = sub(el, "source")
    sub(src, "vendor", id=spec.vendor)
    sub(src, "product", id=spec.product)
    if spec.bus is not None:
        sub(src, "address", bus=spec.bus, device=spec.device)
    if spec.boot_order is not None:
        sub(el, "boot", order=spec.boot_order)
    if spec.usb_version is not None:
        sub(el, "address", type="usb", bus=spec.usb_version - 1)
    return el
