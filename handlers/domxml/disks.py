"""`<disk>` elements: file, block, iSCSI and RBD disks, and CD-ROM drives."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element, sub
from handlers.spec import CdromSpec, DiskSpec
from handlers.storage import detect_format

# the spec's bus names -> libvirt's (virtio-scsi disks sit on bus "scsi")
LIBVIRT_BUS = {"virtio": "virtio", "virtio-scsi": "scsi", "sata": "sata", "ide": "ide"}


def disk_format(spec: DiskSpec, path: str | None = None) -> str:
    """The image format: given, or read from a file disk's header, else raw."""
    if spec.format is not None:
        return spec.format
    if spec.type == "file":
        return detect_format(path or spec.path or "")
    return "raw"


def disk(
    spec: DiskSpec, target_dev: str, *, path: str | None = None, fmt: str | None = None
) -> etree._Element:
    """One disk as `target_dev`; `path`/`fmt` override the spec's (resolved, detected)."""
    path = path or spec.path
    fmt = fmt or disk_format(spec, path)
    kind = "network" if spec.type in ("iscsi", "rbd") else spec.type
    el = element("disk", type=kind, device="disk")
    sub(el, "driver", name="qemu", type=fmt, cache=spec.cache, io=spec.io, discard=spec.discard)
    el.append(_source(spec, path))
    sub(el, "target", dev=target_dev, bus=LIBVIRT_BUS[spec.bus])
    if spec.iotune is not None:
        tune = sub(el, "iotune")
        for name, value in spec.iotune.limits():
            sub(tune, name, str(value))
    if spec.readonly:
        sub(el, "readonly")
    if spec.shareable:
        sub(el, "shareable")
    if spec.serial is not None:
        sub(el, "serial", spec.serial)
    if spec.wwn is not None:
        sub(el, "wwn", spec.wwn.lower().removeprefix("0x"))
    if spec.boot_order is not None:
        sub(el, "boot", order=spec.boot_order)
    return el


def _source(spec: DiskSpec, path: str | None) -> etree._Element:
    if spec.type == "file":
        return element("source", file=path)
    if spec.type == "block":
        return element("source", dev=path)
    if spec.iscsi is not None:
        i = spec.iscsi
        src = element("source", protocol="iscsi", name=f"{i.target}/{i.lun}")
        sub(src, "host", name=i.host, port=i.port)
        secret_type = "iscsi"
    elif spec.rbd is not None:
        r = spec.rbd
        src = element("source", protocol="rbd", name=f"{r.pool}/{r.image}")
        for h in r.hosts:
            sub(src, "host", name=h.name, port=h.port)
        secret_type = "ceph"
    else:  # pragma: no cover - the spec's rules make this unreachable
        raise AssertionError(f"disk type {spec.type} without its source")
    if spec.auth is not None:
        auth = sub(src, "auth", username=spec.auth.username)
        sub(auth, "secret", type=secret_type, uuid=spec.auth.secret_uuid)
    return src


def cdrom(spec: CdromSpec, target_dev: str, *, path: str | None = None) -> etree._Element:
    """One CD-ROM drive as `target_dev`, empty or with an ISO; `path` overrides the spec's."""
    path = path or spec.path
    el = element("disk", type="file", device="cdrom")
    sub(el, "driver", name="qemu", type="raw")
    if path is not None:
        sub(el, "source", file=path)
    sub(el, "target", dev=target_dev, bus=LIBVIRT_BUS[spec.bus])
    sub(el, "readonly")
    if spec.boot_order is not None:
        sub(el, "boot", order=spec.boot_order)
    return el
