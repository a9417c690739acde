"""virtio-serial `<channel>` elements, the QEMU guest agent's first."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub

GUEST_AGENT = "org.qemu.guest_agent.0"


def unix_channel(name: str, path: str | None = None) -> etree._Element:
    """A unix socket channel; libvirt picks the socket path when `path` is None."""
    el = element("channel", type="unix")
    sub(el, "source", mode="bind", path=path)
    sub(el, "target", type="virtio", name=name)
    return el
