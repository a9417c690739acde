"""Single-field checks of the spec: formats, ranges, normalisation, unknown keys."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from handlers.spec import DiskSpec, NicSpec, PciHostdevSpec, UsbHostdevSpec, VmSpec

UUID = "6f1c1a0e-3c1b-4c55-9d0e-2a7b5f2c9e01"
BASE: dict[str, Any] = {"uuid": UUID, "name": "web-1"}


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as exc:
        VmSpec.model_validate({**BASE, **data})
    return str(exc.value)


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = VmSpec.model_validate(BASE)
    assert (spec.vcpus, spec.memory_mib) == (1, 512)
    assert spec.serial_console and spec.guest_agent
    assert spec.graphics is None and spec.disks == [] and spec.nics == []
    assert spec.controllers.usb == "ich9"
    assert spec.balloon.model == "virtio"


def test_uuid_is_normalised_to_canonical_lower_case() -> None:
    spec = VmSpec.model_validate({**BASE, "uuid": UUID.upper()})
    assert spec.uuid == UUID


@pytest.mark.parametrize("uuid", [UUID.replace("-", ""), "{" + UUID + "}", "urn:uuid:" + UUID])
def test_uuid_is_only_the_8_4_4_4_12_form(uuid: str) -> None:
    assert "uuid" in _error({"uuid": uuid})  # as the JSON Schema's pattern says


@pytest.mark.parametrize("name", ["web 1", "", "a/b", "ä", "x" * 65])
def test_bad_names_are_refused(name: str) -> None:
    assert "name" in _error({"name": name})


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"vcpus": 0}, "vcpus"),
        ({"max_vcpus": 256}, "max_vcpus"),
        ({"memory_mib": 8}, "memory_mib"),
        ({"cpu_shares": 1}, "cpu_shares"),
        ({"domain_type": "xen"}, "domain_type"),
        ({"on_crash": "explode"}, "on_crash"),
        ({"emulator": "qemu-kvm"}, "emulator"),
        ({"description": "bell\x07"}, "description"),
        ({"metadata": {"xmlish": "x"}}, "metadata.xmlish"),
        ({"metadata": {"1st": "x"}}, "metadata.1st"),
        ({"os": {"machine": "q35; rm -rf"}}, "os.machine"),
        ({"os": {"loader": "OVMF.fd", "firmware": "uefi"}}, "os.loader"),
        ({"disks": [{"path": "relative.qcow2"}]}, "disks.0.path"),
        ({"disks": [{"path": "/a", "bus": "usb"}]}, "disks.0.bus"),
        ({"disks": [{"path": "/a", "format": "vmdk"}]}, "disks.0.format"),
        ({"disks": [{"path": "/a", "wwn": "xyz", "bus": "ide"}]}, "disks.0.wwn"),
        ({"disks": [{"path": "/a", "serial": "has\nnewline"}]}, "disks.0.serial"),
        ({"cdroms": [{"bus": "virtio"}]}, "cdroms.0.bus"),
        ({"nics": [{"source": "br0", "mac": "52:54:00:00:00"}]}, "nics.0.mac"),
        ({"nics": [{"source": "br0", "mac": "01:00:5e:00:00:01"}]}, "multicast"),
        ({"nics": [{"source": "br0", "mtu": 20}]}, "nics.0.mtu"),
        ({"nics": [{"source": "br 0"}]}, "nics.0.source"),
        ({"graphics": {"listen": "localhost"}}, "graphics.listen"),
        ({"graphics": {"port": 80}}, "graphics.port"),
        ({"pci_devices": [{"address": "0000:03:20.0"}]}, "pci_devices.0.address"),
        ({"pci_devices": [{"address": "03:00.8"}]}, "pci_devices.0.address"),
        ({"usb_devices": [{"vendor": "46d", "product": "c52b"}]}, "usb_devices.0.vendor"),
        ({"usb_devices": [{"vendor": "046d", "product": "zzzz"}]}, "usb_devices.0.product"),
        ({"cpu": {"numa": [{"cpus": "3-1", "memory_mib": 1}]}}, "cpus: range '3-1' runs"),
        ({"cpu": {"numa": [{"cpus": "all", "memory_mib": 1}]}}, "cpu.numa.0.cpus"),
        ({"usb_redirect": 9}, "usb_redirect"),
    ],
)
def test_bad_field_is_named(data: dict[str, Any], field: str) -> None:
    assert field in _error(data)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"disks": [{"path": "/a", "size": 10}]}, "disks.0.size"),
        ({"graphics": {"type": "vnc", "keymap": "de"}}, "graphics.keymap"),
    ],
)
def test_unknown_keys_are_refused_not_ignored(data: dict[str, Any], field: str) -> None:
    assert field in _error(data)


def test_pci_address_is_normalised_with_domain() -> None:
    assert PciHostdevSpec(address="03:00.1").address == "0000:03:00.1"
    assert PciHostdevSpec(address="0000:AF:1F.7").address == "0000:af:1f.7"


def test_usb_ids_are_normalised_to_0x_lower_case() -> None:
    dev = UsbHostdevSpec(vendor="046D", product="0xC52B")
    assert (dev.vendor, dev.product) == ("0x046d", "0xc52b")


def test_mac_is_normalised_to_lower_case() -> None:
    assert NicSpec(source="br0", mac="52:54:00:AA:BB:CC").mac == "52:54:00:aa:bb:cc"


def test_models_are_frozen() -> None:
    disk = DiskSpec(path="/a")
    with pytest.raises(ValidationError):
        disk.path = "/b"  # type: ignore[misc]


def test_spec_survives_a_json_round_trip() -> None:
    data = {
        **BASE,
        "nics": [{"source": "br0", "filterref": {"ip": ["10.0.0.1", "fd00::1"]}}],
        "graphics": {"listen": "::1"},
        "disks": [{"type": "rbd", "rbd": {"pool": "p", "image": "i"}}],
    }
    spec = VmSpec.model_validate(data)
    again = VmSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert json.loads(again.model_dump_json()) == json.loads(spec.model_dump_json())


def test_json_schema_is_exported_for_control_plane_authors() -> None:
    schema = VmSpec.model_json_schema()
    assert schema["required"] == ["uuid", "name"]
    assert schema["additionalProperties"] is False
    assert "DiskSpec" in schema["$defs"]
