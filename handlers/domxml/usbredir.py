"""SPICE USB redirection: `<redirdev>` slots the SPICE client can plug devices into."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element


def redirdevs(count: int) -> list[etree._Element]:
    return [element("redirdev", bus="usb", type="spicevmc") for _ in range(count)]
