"""`<features>`: ACPI, APIC and friends."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub
from handlers.spec import VmSpec


def features(spec: VmSpec) -> etree._Element:
    feats = element("features")
    sub(feats, "acpi")
    sub(feats, "apic")
    return feats
