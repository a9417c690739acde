"""virtio-serial `<channel>` elements: the QEMU guest agent, the SPICE agent, extra sockets."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub
from handlers.spec import GUEST_AGENT_CHANNEL, SPICE_AGENT_CHANNEL


def unix_channel(name: str, path: str | None = None) -> etree._Element:
    """A unix socket channel; libvirt picks the socket path when `path` is None."""
    el = element("channel", type="unix")
    sub(el, "source", mode="bind", path=path)
    sub(el, "target", type="virtio", name=name)
    return el


def guest_agent() -> etree._Element:
    return unix_channel(GUEST_AGENT_CHANNEL)


def spice_agent() -> etree._Element:
    """The SPICE vdagent channel (clipboard, resolution, USB redirection control)."""
    el = element("channel", type="spicevmc")
    sub(el, "target", type="virtio", name=SPICE_AGENT_CHANNEL)
    return el
