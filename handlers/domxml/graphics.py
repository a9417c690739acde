"""Remote display: `<graphics>`, its `<video>` card and a USB tablet for the pointer."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub
from handlers.spec import GraphicsSpec


def graphics(spec: GraphicsSpec) -> etree._Element:
    el = element("graphics", type=spec.type, autoport="yes", passwd=spec.password)
    sub(el, "listen", type="address", address=str(spec.listen))
    return el


def video(spec: GraphicsSpec) -> etree._Element:
    el = element("video")
    sub(el, "model", type="vga")
    return el


def tablet(spec: GraphicsSpec) -> etree._Element:
    return element("input", type="tablet", bus="usb")
