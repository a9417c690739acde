"""Identity and lifecycle: name, uuid, description, our metadata, on_* actions."""

from __future__ import annotations

from lxml import etree

from handlers.domxml._xml import element
from handlers.spec import VmSpec

XMLNS = "https://vmworker.dev/xmlns/vm/1"
PREFIX = "vmworker"


def identity(spec: VmSpec) -> list[etree._Element]:
    """`<name>`, `<uuid>` and, if set, `<description>`."""
    out = [element("name", spec.name), element("uuid", spec.uuid)]
    if spec.description is not None:
        out.append(element("description", spec.description))
    return out


def metadata(spec: VmSpec) -> etree._Element:
    """`<metadata>` holding `<vmworker:vm>` (marks the domain as ours) with one child per key."""
    meta = element("metadata")
    vm = etree.SubElement(meta, f"{{{XMLNS}}}vm", nsmap={PREFIX: XMLNS})
    for key in sorted(spec.metadata):
        etree.SubElement(vm, f"{{{XMLNS}}}{key}").text = spec.metadata[key]
    return meta


def lifecycle(spec: VmSpec) -> list[etree._Element]:
    """What libvirt does when the guest powers off, reboots or crashes."""
    return [
        element("on_poweroff", spec.on_poweroff),
        element("on_reboot", spec.on_reboot),
        element("on_crash", spec.on_crash),
    ]
