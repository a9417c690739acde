"""Golden files: each spec in tests/golden/*.json gives exactly the checked-in *.xml.

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/unit/test_domxml_golden.py`
and review the diff. Every output must also pass libvirt's own schema (virt-xml-validate) and be
accepted by libvirt's test driver (tests/integration/test_qemu_define.py: by a real QEMU's too).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from handlers.domxml import build_domain_xml
from handlers.spec import VmSpec

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
SPECS = sorted(GOLDEN.glob("*.json"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
LIBVIRT_RNG = Path("/usr/share/libvirt/schemas/domain.rng")


def schema_errors(xml_file: Path) -> str | None:
    """None if `xml_file` passes libvirt's domain schema, else the validator's complaint.

    Uses `virt-xml-validate` (libvirt-clients); it needs `xmllint` (libxml2-utils). Without
    xmllint the same schema is checked in-process with lxml's RelaxNG (same libxml2).
    """
    tool = shutil.which("virt-xml-validate")
    if tool and shutil.which("xmllint"):
        proc = subprocess.run(
            [tool, str(xml_file), "domain"], capture_output=True, text=True, timeout=60
        )
        return None if proc.returncode == 0 else (proc.stdout + proc.stderr)
    if not LIBVIRT_RNG.exists():
        pytest.fail(
            "libvirt's schema is not installed (Debian libvirt-clients): run scripts/bootstrap"
        )
    from lxml import etree

    schema = etree.RelaxNG(etree.parse(str(LIBVIRT_RNG)))
    if schema.validate(etree.parse(str(xml_file))):
        return None
    return str(schema.error_log)


def _build(spec_file: Path) -> str:
    spec = VmSpec.model_validate(json.loads(spec_file.read_text()))
    return build_domain_xml(spec, domain_type="kvm")


@pytest.fixture(scope="module")
def test_conn() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


@pytest.mark.parametrize("spec_file", SPECS, ids=[p.stem for p in SPECS])
def test_spec_gives_the_golden_xml(spec_file: Path) -> None:
    xml = _build(spec_file)
    golden = spec_file.with_suffix(".xml")
    if UPDATE:
        golden.write_text(xml)
    assert golden.exists(), f"no {golden.name}; run with UPDATE_GOLDEN=1 to create it"
    assert xml == golden.read_text()


@pytest.mark.parametrize("spec_file", SPECS, ids=[p.stem for p in SPECS])
def test_golden_xml_passes_libvirt_schema(spec_file: Path) -> None:
    errors = schema_errors(spec_file.with_suffix(".xml"))
    assert errors is None, errors


@pytest.mark.parametrize("spec_file", SPECS, ids=[p.stem for p in SPECS])
def test_golden_xml_is_defined_by_libvirt(spec_file: Path, test_conn: libvirt.virConnect) -> None:
    dom = test_conn.defineXML(_build(spec_file))
    try:
        assert dom.name() == json.loads(spec_file.read_text())["name"]
    finally:
        dom.undefine()


def test_there_is_a_golden_spec_for_each_kind_of_vm() -> None:
    names = {p.stem for p in SPECS}
    expected = {
        "minimal",
        "linux-server",
        "windows-uefi-hyperv",
        "many-disks",
        "nic-qos",
        "passthrough",
        "spice-desktop",
    }
    assert expected <= names
