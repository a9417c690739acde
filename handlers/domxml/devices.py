"""The devices of a domain that have device hook chains (`<disk>`, `<interface>`, `<hostdev>`),
each named by a key that survives a round trip through libvirt, and their own custom properties.

A device's custom properties are kept in the domain's `<metadata>`, under their own namespace
(`<vmworker-devices:devices>`, written only when some device has any), so that every later
operation on the domain (start from its definition, destroy, undefine, an incoming migration)
finds them again, as VDSM keeps them in its `ovirt-vm` metadata.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from lxml import etree

DEVICES_XMLNS = "https://vmworker.dev/xmlns/devices/1"
DEVICES_PREFIX = "vmworker-devices"
DEVICE_TAGS = ("disk", "interface", "hostdev")


def _hex(value: str | None) -> str:
    try:
        return format(int(value or "", 0), "x")
    except ValueError:
        return str(value)


def device_key(el: etree._Element) -> str | None:
    """`disk:vda`, `interface:52:54:00:..`, `hostdev:pci:0:3:0.0`, `hostdev:usb:46d:c52b`, or
    None for a device that carries nothing to name it by."""
    if el.tag == "disk":
        dev = el.find("target")
        return f"disk:{dev.get('dev')}" if dev is not None and dev.get("dev") else None
    if el.tag == "interface":
        mac = el.find("mac")
        address = mac.get("address") if mac is not None else None
        return f"interface:{address.lower()}" if address else None
    if el.tag == "hostdev":
        src = el.find("source")
        if src is None:
            return None
        if el.get("type") == "pci":
            a = src.find("address")
            if a is None:
                return None
            parts = [_hex(a.get(k)) for k in ("domain", "bus", "slot", "function")]
            return f"hostdev:pci:{parts[0]}:{parts[1]}:{parts[2]}.{parts[3]}"
        if el.get("type") == "usb":
            ids = [src.find(k) for k in ("vendor", "product")]
            if any(i is None for i in ids):
                return None
            key = "hostdev:usb:" + ":".join(_hex(i.get("id")) for i in ids if i is not None)
            a = src.find("address")
            if a is not None:
                key += f":{a.get('bus')}.{a.get('device')}"
            return key
    return None


def device_elements(domain: etree._Element) -> Iterator[tuple[etree._Element, str]]:
    """Each hooked device of a `<domain>` in document order, with its key (or, for a device
    without one, `<tag>#<n>`: its place among the devices)."""
    devices = domain.find("devices")
    if devices is None:
        return
    for n, el in enumerate(c for c in devices if c.tag in DEVICE_TAGS):
        yield el, device_key(el) or f"{el.tag}#{n}"


def custom_metadata(customs: Sequence[tuple[str, Mapping[str, str]]]) -> etree._Element | None:
    """`<vmworker-devices:devices>` holding each (key, custom) that has any property; None when
    no device has one (the domain XML is then as it was before devices had custom)."""
    kept = [(key, custom) for key, custom in customs if custom]
    if not kept:
        return None
    root = etree.Element(f"{{{DEVICES_XMLNS}}}devices", nsmap={DEVICES_PREFIX: DEVICES_XMLNS})
    for key, custom in kept:
        dev = etree.SubElement(root, f"{{{DEVICES_XMLNS}}}device", key=key)
        for name in sorted(custom):
            etree.SubElement(dev, f"{{{DEVICES_XMLNS}}}custom", name=name).text = custom[name]
    return root


def read_custom(domain: etree._Element) -> dict[str, dict[str, str]]:
    """key -> custom properties, as `custom_metadata` stored them in `domain`'s `<metadata>`."""
    meta = domain.find("metadata")
    if meta is None:
        return {}
    out: dict[str, dict[str, str]] = {}
    for devs in meta.iterfind(f"{{{DEVICES_XMLNS}}}devices"):
        for dev in devs.iterfind(f"{{{DEVICES_XMLNS}}}device"):
            key = dev.get("key")
            if key:
                out[key] = {
                    str(c.get("name")): c.text or ""
                    for c in dev.iterfind(f"{{{DEVICES_XMLNS}}}custom")
                    if c.get("name")
                }
    return out
