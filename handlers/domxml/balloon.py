"""`<memballoon>`."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub


def memballoon() -> etree._Element:
    el = element("memballoon", model="virtio")
    sub(el, "stats", period="10")
    return el
