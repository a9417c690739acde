"""`<os>`: guest type, firmware and boot order."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub
from handlers.spec import VmSpec


def os_section(spec: VmSpec) -> etree._Element:
    os_el = element("os")
    sub(os_el, "type", "hvm", arch="x86_64")
    return os_el
