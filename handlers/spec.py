"""The VM spec: the `vm` object of an operation message, validated (pydantic v2).

The smallest valid spec is `{"uuid": "...", "name": "web-1", "vcpus": 1, "memory_mib": 512}`.
Every model forbids unknown keys, so a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from ipaddress import IPv4Address
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, IPvAnyAddress

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _canonical_uuid(value: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise ValueError("not a UUID (expected 8-4-4-4-12 hex digits)") from None


def _mac(value: str) -> str:
    value = value.lower()
    if not _MAC_RE.match(value):
        raise ValueError("not a MAC address (expected six hex pairs like 52:54:00:12:34:56)")
    return value


def _abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    return value


Uuid = Annotated[str, AfterValidator(_canonical_uuid)]
Mac = Annotated[str, AfterValidator(_mac)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DiskSpec(_Model):
    """A disk; `path` is a host file."""

    path: AbsPath
    format: Literal["qcow2", "raw"] | None = None
    bus: Literal["virtio"] = "virtio"


class CdromSpec(_Model):
    """A CD-ROM drive, empty when `path` is not set."""

    path: AbsPath | None = None


class NicSpec(_Model):
    """A network interface."""

    type: Literal["bridge", "network"] = "bridge"
    source: str = Field(min_length=1, max_length=64)
    model: Literal["virtio", "e1000", "e1000e", "rtl8139"] = "virtio"
    mac: Mac | None = None


class GraphicsSpec(_Model):
    """A remote display."""

    type: Literal["vnc"] = "vnc"
    listen: IPvAnyAddress = IPv4Address("127.0.0.1")
    password: str | None = Field(default=None, min_length=1)


class VmSpec(_Model):
    """A whole virtual machine."""

    uuid: Uuid
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)
    description: str | None = None
    domain_type: Literal["kvm", "qemu"] | None = None
    vcpus: int = Field(default=1, ge=1, le=512)
    memory_mib: int = Field(default=512, ge=16, le=16 * 1024 * 1024)
    disks: list[DiskSpec] = Field(default_factory=list)
    cdroms: list[CdromSpec] = Field(default_factory=list)
    nics: list[NicSpec] = Field(default_factory=list)
    graphics: GraphicsSpec | None = None
    serial_console: bool = True
    guest_agent: bool = True
