"""The smallest spec gives a domain libvirt accepts, the same bytes every time."""

from __future__ import annotations

import libvirt
import pytest
from lxml import etree
from pydantic import ValidationError

from handlers.domxml import build_domain_xml, default_domain_type
from handlers.spec import VmSpec

MINIMAL = {
    "uuid": "6f1c1a0e-3c1b-4c55-9d0e-2a7b5f2c9e01",
    "name": "web-1",
    "vcpus": 1,
    "memory_mib": 512,
}


def test_minimal_spec_is_defined_by_libvirt_test_driver() -> None:
    xml = build_domain_xml(VmSpec.model_validate(MINIMAL), domain_type="kvm")
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(xml)
        assert dom.UUIDString() == MINIMAL["uuid"]
        dom.undefine()
    finally:
        conn.close()


def test_same_spec_gives_identical_bytes() -> None:
    a = build_domain_xml(VmSpec.model_validate(MINIMAL), domain_type="kvm")
    b = build_domain_xml(VmSpec.model_validate(dict(MINIMAL)), domain_type="kvm")
    assert a == b


def test_minimal_domain_has_console_agent_channel_and_balloon() -> None:
    root = etree.fromstring(build_domain_xml(VmSpec.model_validate(MINIMAL), domain_type="kvm"))
    assert root.findtext("os/type") == "hvm"
    assert root.find("features/acpi") is not None
    assert root.find("devices/console/target").get("type") == "serial"
    assert root.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"
    assert root.find("devices/memballoon").get("model") == "virtio"


def test_domain_type_defaults_to_host_capability() -> None:
    root = etree.fromstring(build_domain_xml(VmSpec.model_validate(MINIMAL)))
    assert root.get("type") == default_domain_type()


def test_spec_domain_type_is_overridden_by_argument() -> None:
    spec = VmSpec.model_validate({**MINIMAL, "domain_type": "qemu"})
    assert etree.fromstring(build_domain_xml(spec)).get("type") == "qemu"
    assert etree.fromstring(build_domain_xml(spec, domain_type="kvm")).get("type") == "kvm"


@pytest.mark.parametrize(
    ("patch", "field"),
    [({"uuid": "nope"}, "uuid"), ({"name": "web 1"}, "name"), ({"colour": "red"}, "colour")],
)
def test_bad_minimal_spec_names_the_field(patch: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        VmSpec.model_validate({**MINIMAL, **patch})
    assert field in str(exc.value)
