"""`<controller>` elements: the USB layouts and virtio-scsi."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub


def usb(layout: str) -> list[etree._Element]:
    """The USB controllers of a `controllers.usb` layout (see the spec)."""
    if layout == "ich9":
        # one USB 2 EHCI with three USB 1 companions sharing bus 0 (seed 003's redirect layout)
        out = [element("controller", type="usb", index=0, model="ich9-ehci1")]
        for n, startport in ((1, 0), (2, 2), (3, 4)):
            uhci = element("controller", type="usb", index=0, model=f"ich9-uhci{n}")
            sub(uhci, "master", startport=startport)
            out.append(uhci)
        return out
    if layout == "uhci-ehci-xhci":
        # one controller per USB version: bus 0 USB 1.1, bus 1 USB 2, bus 2 USB 3 (seed 003)
        return [
            element("controller", type="usb", index=0, model="piix3-uhci"),
            element("controller", type="usb", index=1, model="ehci"),
            element("controller", type="usb", index=2, model="nec-xhci"),
        ]
    if layout == "qemu-xhci":
        return [element("controller", type="usb", index=0, model="qemu-xhci")]
    # without this libvirt would add its default controller
    return [element("controller", type="usb", index=0, model="none")]


def virtio_scsi(queues: int | None = None) -> etree._Element:
    el = element("controller", type="scsi", index=0, model="virtio-scsi")
    if queues is not None:
        sub(el, "driver", queues=queues)
    return el
