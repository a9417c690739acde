"""`<features>`: ACPI, APIC, PAE, Hyper-V enlightenments, hidden KVM, SMM for Secure Boot."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, onoff, sub
from handlers.spec import FeaturesSpec, HypervSpec

# libvirt's own order, so the output reads like `virsh dumpxml`
_HYPERV_ORDER = (
    "relaxed",
    "vapic",
    "spinlocks",
    "vpindex",
    "runtime",
    "synic",
    "stimer",
    "reset",
    "vendor_id",
    "frequencies",
    "tlbflush",
    "ipi",
)


def features(spec: FeaturesSpec, *, smm: bool = False) -> etree._Element:
    """`<features>`; `smm` is set when Secure Boot firmware needs it."""
    feats = element("features")
    for flag in ("acpi", "apic", "pae"):
        if getattr(spec, flag):
            sub(feats, flag)
    if spec.hyperv is not None:
        feats.append(hyperv(spec.hyperv))
    if spec.kvm_hidden:
        kvm = sub(feats, "kvm")
        sub(kvm, "hidden", state="on")
    if smm:
        sub(feats, "smm", state="on")
    return feats


def hyperv(spec: HypervSpec) -> etree._Element:
    hv = element("hyperv", mode="custom")
    for flag in _HYPERV_ORDER:
        if flag == "spinlocks":
            on = spec.spinlocks is not None
            sub(hv, flag, state=onoff(on), retries=spec.spinlocks)
        elif flag == "vendor_id":
            if spec.vendor_id is not None:
                sub(hv, flag, state="on", value=spec.vendor_id)
        else:
            sub(hv, flag, state=onoff(getattr(spec, flag)))
    return hv
