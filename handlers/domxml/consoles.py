"""The serial console: a pty `<serial>` and the `<console>` on it."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub


def serial_console() -> list[etree._Element]:
    serial = element("serial", type="pty")
    sub(serial, "target", port="0")
    console = element("console", type="pty")
    sub(console, "target", type="serial", port="0")
    return [serial, console]
