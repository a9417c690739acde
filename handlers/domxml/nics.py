"""`<interface>` elements: bridge, network or direct, with QoS, filter, MTU and link state."""

from __future__ import annotations

import hashlib

from lxml import etree

from handlers.domxml._xml import element, sub
from handlers.spec import NicSpec, RateSpec


def stable_mac(vm_uuid: str, index: int) -> str:
    """A MAC in QEMU's 52:54:00 range derived from the VM uuid and the NIC's position.

    libvirt would pick a random one; a derived one keeps the guest's NIC the same across
    redefinitions and keeps the XML deterministic.
    """
    digest = hashlib.sha256(f"{vm_uuid}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def interface(spec: NicSpec, mac: str | None = None) -> etree._Element:
    """One NIC; `mac` is used when the spec has none (else libvirt picks one)."""
    el = element("interface", type=spec.type)
    address = spec.mac or mac
    if address is not None:
        sub(el, "mac", address=address)
    if spec.type == "bridge":
        sub(el, "source", bridge=spec.source)
    elif spec.type == "network":
        sub(el, "source", network=spec.source)
    else:
        sub(el, "source", dev=spec.source, mode=spec.mode or "bridge")
    if spec.target_dev is not None:
        sub(el, "target", dev=spec.target_dev)
    sub(el, "model", type=spec.model)
    if spec.queues is not None:
        sub(el, "driver", name="vhost", queues=spec.queues)
    if spec.bandwidth is not None:
        bw = sub(el, "bandwidth")
        for direction in ("inbound", "outbound"):
            rate: RateSpec | None = getattr(spec.bandwidth, direction)
            if rate is not None:
                sub(
                    bw,
                    direction,
                    average=rate.average_kbytes,
                    peak=rate.peak_kbytes,
                    burst=rate.burst_kbytes,
                )
    if spec.filterref is not None:
        f = spec.filterref
        ref = sub(el, "filterref", filter=f.name)
        for ip in f.ip:
            sub(ref, "parameter", name="IP", value=str(ip))
        for key in sorted(f.parameters):
            sub(ref, "parameter", name=key, value=f.parameters[key])
    if spec.mtu is not None:
        sub(el, "mtu", size=spec.mtu)
    if spec.link_state is not None:
        sub(el, "link", state=spec.link_state)
    if spec.boot_order is not None:
        sub(el, "boot", order=spec.boot_order)
    return el
