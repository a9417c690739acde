"""The scalar types of the VM spec: each the validator the worker runs and, where pydantic cannot
show that validator's rule in the JSON Schema, the same rule as JSON Schema keywords (a pattern
in ECMA-262 syntax), so `vmworker schema` says what the worker checks."""

from __future__ import annotations

import ipaddress
import json
import re
import uuid as uuidlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, GetJsonSchemaHandler
from pydantic_core import CoreSchema

UUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"


def _canonical_uuid(value: str) -> str:
    return str(uuidlib.UUID(value))  # the pattern checked its form


# the schema says the same as the validator, in ECMA-262 regex syntax (what JSON Schema uses)
_XML_BAD_CHARS = "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\ufffe\\uffff"
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _xml_text(value: str) -> str:
    if _XML_BAD.search(value):
        raise ValueError("contains a control character XML cannot carry")
    return value


def _abs_path(value: str) -> str:
    _xml_text(value)
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return value


_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _mac(value: str) -> str:
    value = value.lower()
    if not _MAC_RE.fullmatch(value):
        raise ValueError("not a MAC address (expected six hex pairs like 52:54:00:12:34:56)")
    if int(value[:2], 16) & 1:
        raise ValueError("is a multicast MAC address; a NIC needs a unicast one")
    if value == "00:00:00:00:00:00":
        raise ValueError("is the all-zero MAC address")
    return value


_PCI_RE = re.compile(r"(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])")


def _pci_address(value: str) -> str:
    m = _PCI_RE.fullmatch(value.lower())
    if not m:
        raise ValueError("not a PCI address (expected dddd:bb:ss.f, e.g. 0000:03:00.0)")
    domain, bus, slot, function = m.groups()
    if int(slot, 16) > 0x1F:
        raise ValueError("PCI slot must be 00-1f")
    return f"{domain or '0000'}:{bus}:{slot}.{function}"


def _usb_id(value: str) -> str:
    m = re.fullmatch(r"(?:0x)?([0-9a-fA-F]{4})", value)
    if not m:
        raise ValueError("not a USB id (expected 4 hex digits, e.g. 046d or 0x046d)")
    return "0x" + m.group(1).lower()


def _ip_address(value: str) -> str:
    return str(ipaddress.ip_address(value))  # the pattern checked its form; canonical


_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(\.{_OCTET}){{3}}"
_H = "[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join(
    [
        f"({_H}:){{7}}{_H}",
        f"({_H}:){{1,7}}:",
        f"({_H}:){{1,6}}:{_H}",
        *(f"({_H}:){{1,{5 - i}}}(:{_H}){{1,{i + 2}}}" for i in range(5)),
        f":((:{_H}){{1,7}}|:)",
        f"({_H}:){{6}}{_IPV4}",
        f"::(ffff(:0{{1,4}})?:)?{_IPV4}",
        f"({_H}:){{1,5}}:{_IPV4}",
    ]
)


@dataclass(frozen=True)
class _Schema:
    """JSON Schema keywords for a check made by a validator pydantic cannot show as one."""

    extra: str  # JSON: a hashable annotation

    def __get_pydantic_json_schema__(
        self, core: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        schema = dict(handler(core))
        schema.update(json.loads(self.extra))
        return schema


def schema_keywords(**extra: Any) -> _Schema:
    return _Schema(json.dumps(extra))


def _text_schema(prefix: str = "") -> _Schema:
    kind = "absolute path, no control characters" if prefix else "no control characters"
    return schema_keywords(pattern=f"^{prefix}[^{_XML_BAD_CHARS}]*$", **{"x-kind": kind})


# each scalar: the validator the worker runs, and the same rule as a JSON Schema pattern
Uuid = Annotated[str, Field(pattern=UUID_PATTERN), AfterValidator(_canonical_uuid)]
XmlText = Annotated[str, AfterValidator(_xml_text), _text_schema()]
AbsPath = Annotated[str, Field(max_length=4096), AfterValidator(_abs_path), _text_schema("/")]
Mac = Annotated[
    str,
    AfterValidator(_mac),
    schema_keywords(
        pattern="^[0-9A-Fa-f][02468AaCcEe](:[0-9A-Fa-f]{2}){5}$",
        **{"x-kind": "unicast MAC address, not all zeros"},
        **{"not": {"const": "00:00:00:00:00:00"}},
    ),
]
PciAddress = Annotated[
    str,
    AfterValidator(_pci_address),
    schema_keywords(pattern=r"^([0-9A-Fa-f]{4}:)?[0-9A-Fa-f]{2}:[01][0-9A-Fa-f]\.[0-7]$"),
]
UsbId = Annotated[str, AfterValidator(_usb_id), schema_keywords(pattern="^(0x)?[0-9A-Fa-f]{4}$")]
IpAddress = Annotated[
    str,
    Field(pattern=f"^({_IPV4}|{_IPV6})$"),
    AfterValidator(_ip_address),
    schema_keywords(**{"x-kind": "IPv4 or IPv6 address"}),
]
BootOrder = Annotated[int, Field(ge=1, le=65535)]
IfName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,15}$")]
Word = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+-]{1,64}$")]
BusName = Literal["virtio", "virtio-scsi", "sata", "ide"]
# names follow the hook engine's rule on custom properties, checked where messages are parsed
DeviceCustom = Annotated[
    dict[Annotated[str, Field(max_length=128)], Annotated[XmlText, Field(max_length=4096)]],
    Field(max_length=64),
]
DEVICE_CUSTOM_DOC = (
    "Custom properties for this device's hooks (`device_create`, `device_destroy`, ...), over"
    " the message's `custom`; kept in the domain's metadata."
)
CacheMode = Literal["none", "writethrough", "writeback", "directsync", "unsafe", "default"]
