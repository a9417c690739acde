"""The VM specs of the unit tests through a real qemu:///system libvirtd: its define-time
checks (much more than the schema: bus vs machine, tick policies, ...), and the minimal spec boots.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from hypothesis import HealthCheck, given, settings

from handlers.domxml import build_domain_xml
from handlers.spec import VmSpec
from tests.unit.test_domxml_minimal import MINIMAL
from tests.unit.test_domxml_property import specs

pytestmark = pytest.mark.qemu

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
SPECS = sorted(GOLDEN.glob("*.json"))


@pytest.fixture(scope="module")
def qemu_conn(qemu: str) -> Iterator[libvirt.virConnect]:
    c = libvirt.open(qemu)
    yield c
    c.close()


@pytest.mark.parametrize("spec_file", SPECS, ids=[p.stem for p in SPECS])
def test_golden_xml_passes_qemu_driver_define_checks(
    spec_file: Path, qemu_conn: libvirt.virConnect
) -> None:
    spec = json.loads(spec_file.read_text())
    # a name and uuid of our own, so nothing on the host can clash with the golden ones
    spec["name"] = f"vmworker-golden-{spec_file.stem}"
    spec["uuid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"vmworker-golden/{spec_file.stem}"))
    xml = build_domain_xml(VmSpec.model_validate(spec), domain_type="kvm")
    dom = qemu_conn.defineXML(xml)
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)


def test_minimal_spec_boots_on_real_qemu(qemu_conn: libvirt.virConnect) -> None:
    spec = VmSpec.model_validate(
        {**MINIMAL, "uuid": str(uuid.uuid4()), "name": f"vmworker-minimal-{uuid.uuid4().hex[:8]}"}
    )
    dom = qemu_conn.defineXML(build_domain_xml(spec))
    try:
        dom.create()
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        dom.destroy()
    finally:
        dom.undefine()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=specs())
def test_valid_spec_passes_qemu_driver_define_checks(
    data: dict[str, Any], qemu_conn: libvirt.virConnect
) -> None:
    """The QEMU driver's define-time checks (bus vs machine, tick policies, ...) all pass."""
    data = {**data, "name": f"vmworker-hyp-{data['uuid'][:8]}"}
    xml = build_domain_xml(VmSpec.model_validate(data), domain_type="kvm")
    dom = qemu_conn.defineXML(xml)
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
