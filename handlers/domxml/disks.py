"""`<disk>` elements: disks and CD-ROMs."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub
from handlers.spec import CdromSpec, DiskSpec
from handlers.storage import detect_format


def disk(spec: DiskSpec, target_dev: str) -> etree._Element:
    """One disk, with its target device name already chosen."""
    fmt = spec.format or detect_format(spec.path)
    el = element("disk", type="file", device="disk")
    sub(el, "driver", name="qemu", type=fmt)
    sub(el, "source", file=spec.path)
    sub(el, "target", dev=target_dev, bus=spec.bus)
    return el


def cdrom(spec: CdromSpec, target_dev: str) -> etree._Element:
    """One CD-ROM drive, empty or with an ISO."""
    el = element("disk", type="file", device="cdrom")
    sub(el, "driver", name="qemu", type="raw")
    if spec.path is not None:
        sub(el, "source", file=spec.path)
    sub(el, "target", dev=target_dev, bus="sata")
    sub(el, "readonly")
    return el
