"""`<interface>` elements."""

from __future__ import annotations

import hashlib

from lxml import etree

from handlers.domxml._xml import element, sub
from handlers.spec import NicSpec


def stable_mac(vm_uuid: str, index: int) -> str:
    """A MAC in QEMU's 52:54:00 range derived from the VM and the NIC's position.

    libvirt would pick a random one; a derived one keeps the guest's NIC the same across
    redefinitions and keeps the XML deterministic.
    """
    digest = hashlib.sha256(f"{vm_uuid}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def interface(spec: NicSpec, mac: str | None = None) -> etree._Element:
    """One NIC; `mac` is used when the spec has none."""
    el = element("interface", type=spec.type)
    address = spec.mac or mac
    if address is not None:
        sub(el, "mac", address=address)
    if spec.type == "bridge":
        sub(el, "source", bridge=spec.source)
    else:
        sub(el, "source", network=spec.source)
    sub(el, "model", type=spec.model)
    return el
