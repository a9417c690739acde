"""Property: any valid spec gives XML that libvirt's schema and libvirt itself accept.

Specs are generated valid by construction (every rule of handlers.spec respected), so the
test also proves the rules do not refuse good specs.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from handlers.domxml import build_domain_xml
from handlers.spec import VmSpec

LIBVIRT_RNG = Path("/usr/share/libvirt/schemas/domain.rng")

Draw = Any  # hypothesis' draw function

names = st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True)
words = st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True)
paths = st.builds(lambda a, b: f"/srv/{a}/{b}.img", words, words)
macs = st.builds(
    lambda b: "52:54:00:" + ":".join(f"{x:02x}" for x in b),
    st.lists(st.integers(0, 255), min_size=3, max_size=3),
)


@st.composite
def cpu_and_memory(draw: Draw) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sockets, cores, threads = (
        draw(st.integers(1, 2)),
        draw(st.integers(1, 4)),
        draw(st.integers(1, 2)),
    )
    max_vcpus = sockets * cores * threads
    out["vcpus"] = draw(st.integers(1, max_vcpus))
    if max_vcpus > out["vcpus"] or draw(st.booleans()):
        out["max_vcpus"] = max_vcpus
    memory = draw(st.sampled_from([128, 256, 512, 1024, 2048]))
    out["memory_mib"] = memory
    cpu: dict[str, Any] = {}
    mode = draw(st.sampled_from([None, "host-model", "host-passthrough", "custom"]))
    if mode is not None:
        cpu["mode"] = mode
        if mode == "custom":
            cpu["model"] = draw(st.sampled_from(["qemu64", "Skylake-Client", "EPYC"]))
        if mode != "host-passthrough" and draw(st.booleans()):
            cpu["fallback"] = draw(st.sampled_from(["allow", "forbid"]))
        flags = draw(st.lists(st.sampled_from(["vmx", "pcid", "ssse3", "aes"]), unique=True))
        policies = st.sampled_from(["require", "disable", "optional"])
        cpu["features"] = [{"name": f, "policy": draw(policies)} for f in flags]
    if draw(st.booleans()):
        cpu["topology"] = {"sockets": sockets, "cores": cores, "threads": threads}
    if max_vcpus >= 2 and draw(st.booleans()):
        split = draw(st.integers(1, max_vcpus - 1))
        first = f"0-{split - 1}" if split > 1 else "0"
        second = f"{split}-{max_vcpus - 1}" if max_vcpus - 1 > split else str(split)
        cpu["numa"] = [
            {"cpus": first, "memory_mib": memory // 2},
            {"cpus": second, "memory_mib": memory - memory // 2},
        ]
    if cpu:
        out["cpu"] = cpu
    if draw(st.booleans()):
        out["max_memory_mib"] = memory * draw(st.integers(1, 4))
        out["memory_slots"] = draw(st.integers(1, 16))
    if draw(st.booleans()):
        out["hugepages"] = {"size_kib": draw(st.sampled_from([None, 2048]))}
    if draw(st.booleans()):
        out["cpu_shares"] = draw(st.integers(2, 262144))
    return out


@st.composite
def disk(draw: Draw, q35: bool, ide_left: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["file", "block", "iscsi", "rbd"]))
    d: dict[str, Any] = {"type": kind}
    if kind in ("file", "block"):
        d["path"] = draw(paths) if kind == "file" else f"/dev/vg0/{draw(words)}"
    elif kind == "iscsi":
        d["iscsi"] = {"host": "192.0.2.1", "target": f"iqn.2003-01.org.x:{draw(words)}"}
    else:
        hosts = [{"name": h} for h in draw(st.lists(words, max_size=2))]
        d["rbd"] = {"pool": draw(words), "image": draw(words), "hosts": hosts}
    if kind in ("iscsi", "rbd") and draw(st.booleans()):
        d["auth"] = {"username": draw(words), "secret_uuid": str(draw(st.uuids()))}
    buses = ["virtio", "virtio-scsi", "sata"] + (["ide"] if not q35 and ide_left > 0 else [])
    d["bus"] = draw(st.sampled_from(buses))
    d["format"] = draw(st.sampled_from(["qcow2", "raw"]))
    cache = draw(st.sampled_from([None, "none", "writeback", "directsync", "unsafe"]))
    if cache:
        d["cache"] = cache
    if cache in ("none", "directsync") and draw(st.booleans()):
        d["io"] = "native"
    elif draw(st.booleans()):
        d["io"] = draw(st.sampled_from(["threads", "io_uring"]))
    if draw(st.booleans()):
        d["discard"] = "unmap"
    if draw(st.booleans()):
        kind_of_limit = draw(st.sampled_from(["total", "split"]))
        if kind_of_limit == "total":
            d["iotune"] = {"total_bytes_sec": draw(st.integers(1, 10**9))}
        else:
            d["iotune"] = {"read_iops_sec": draw(st.integers(1, 10**5)), "write_iops_sec": 100}
    if d["format"] == "raw" and draw(st.booleans()):
        d["shareable"] = True
    if d["bus"] in ("virtio", "virtio-scsi") and draw(st.booleans()):
        d["readonly"] = True
    if draw(st.booleans()):
        d["serial"] = draw(words)
    if d["bus"] in ("virtio-scsi", "ide") and draw(st.booleans()):
        d["wwn"] = "5000c50015ea71" + f"{draw(st.integers(0, 255)):02x}"
    return d


TICKPOLICIES = {
    "rtc": ["delay", "catchup"],
    "pit": ["delay", "catchup", "discard"],
    "hpet": ["delay", "catchup", "merge", "discard"],
}


@st.composite
def timer(draw: Draw, name: str) -> dict[str, Any]:
    if name in TICKPOLICIES and draw(st.booleans()):
        return {"name": name, "tickpolicy": draw(st.sampled_from(TICKPOLICIES[name]))}
    return {"name": name, "present": draw(st.booleans())}


@st.composite
def specs(draw: Draw) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "uuid": str(draw(st.uuids())),
        # a prefix keeps clear of the test driver's own "test" domain
        "name": "hyp-" + draw(names),
    }
    if draw(st.booleans()):
        spec["description"] = draw(
            st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40)
        )
    if draw(st.booleans()):
        spec["metadata"] = draw(
            st.dictionaries(
                st.from_regex(r"[a-w][a-z0-9_]{0,8}", fullmatch=True), words, max_size=3
            )
        )
    spec.update(draw(cpu_and_memory()))

    machine = draw(st.sampled_from([None, "pc", "q35"]))
    q35 = machine == "q35"
    os_: dict[str, Any] = {}
    if machine:
        os_["machine"] = machine
    if draw(st.booleans()):
        os_["firmware"] = "uefi"
        if draw(st.booleans()):
            os_["loader"] = "/usr/share/OVMF/OVMF_CODE.fd"
            os_["nvram"] = f"/var/lib/vm/{draw(words)}_VARS.fd"
        if q35 and draw(st.booleans()):
            os_["secure_boot"] = True
    if draw(st.booleans()):
        os_["boot_menu"] = True
        if draw(st.booleans()):
            os_["boot_menu_timeout_ms"] = draw(st.integers(0, 65535))
    use_os_boot = draw(st.booleans())
    if use_os_boot:
        os_["boot"] = draw(st.lists(st.sampled_from(["hd", "cdrom", "network"]), unique=True))
    spec["os"] = os_

    features: dict[str, Any] = {
        "acpi": os_.get("firmware") == "uefi" or draw(st.booleans()),
        "pae": draw(st.booleans()),
        "kvm_hidden": draw(st.booleans()),
    }
    if draw(st.booleans()):
        features["hyperv"] = {
            "spinlocks": draw(st.sampled_from([None, 8191])),
            "ipi": draw(st.booleans()),
        }
    spec["features"] = features
    if draw(st.booleans()):
        timer_names = ["rtc", "pit", "hpet", "kvmclock", "hypervclock"]
        timers = draw(st.lists(st.sampled_from(timer_names), unique=True))
        spec["clock"] = {
            "offset": draw(st.sampled_from(["utc", "localtime"])),
            "timers": [draw(timer(t)) for t in timers],
        }

    ide_left = 0 if q35 else 4
    disks = []
    for _ in range(draw(st.integers(0, 5))):
        d = draw(disk(q35, ide_left))
        ide_left -= d["bus"] == "ide"
        disks.append(d)
    spec["disks"] = disks
    cdroms = []
    for _ in range(draw(st.integers(0, 2))):
        buses = ["sata", "virtio-scsi"] + (["ide"] if ide_left > 0 else [])
        c: dict[str, Any] = {"bus": draw(st.sampled_from(buses))}
        ide_left -= c["bus"] == "ide"
        if draw(st.booleans()):
            c["path"] = draw(paths)
        cdroms.append(c)
    spec["cdroms"] = cdroms

    nics = []
    nic_macs = draw(st.lists(macs, unique=True, max_size=3))
    for mac in nic_macs:
        kind = draw(st.sampled_from(["bridge", "network", "direct"]))
        n: dict[str, Any] = {"type": kind, "source": draw(words)}
        if draw(st.booleans()):
            n["mac"] = mac
        if kind == "direct":
            n["mode"] = draw(st.sampled_from(["vepa", "bridge", "private", "passthrough"]))
        n["model"] = draw(st.sampled_from(["virtio", "e1000", "e1000e", "rtl8139"]))
        if n["model"] == "virtio" and draw(st.booleans()):
            n["queues"] = draw(st.integers(1, 8))
        if draw(st.booleans()):
            avg = draw(st.integers(1, 10**6))
            n["bandwidth"] = {"inbound": {"average_kbytes": avg, "peak_kbytes": avg * 2}}
        if draw(st.booleans()):
            n["filterref"] = {"ip": ["10.0.0.1"]}
        if kind != "direct" and draw(st.booleans()):
            n["mtu"] = draw(st.integers(68, 9000))
        if draw(st.booleans()):
            n["link_state"] = draw(st.sampled_from(["up", "down"]))
        nics.append(n)
    spec["nics"] = nics

    if not use_os_boot:
        bootables = [*disks, *cdroms, *nics]
        chosen = draw(st.lists(st.integers(0, max(len(bootables) - 1, 0)), unique=True, max_size=3))
        for order, index in enumerate(chosen, start=1):
            if index < len(bootables):
                bootables[index]["boot_order"] = order

    usb = draw(st.sampled_from(["ich9", "uhci-ehci-xhci", "qemu-xhci", "none"]))
    spec["controllers"] = {"usb": usb}
    if draw(st.booleans()):
        gtype = draw(st.sampled_from(["vnc", "spice"]))
        g: dict[str, Any] = {
            "type": gtype,
            "listen": draw(st.sampled_from(["127.0.0.1", "0.0.0.0", "::1"])),
        }
        if draw(st.booleans()):
            g["password"] = draw(st.from_regex(r"[A-Za-z0-9!]{1,8}", fullmatch=True))
        spec["graphics"] = g
        if gtype == "spice" and usb != "none":
            spec["usb_redirect"] = draw(st.integers(0, 4))
        if draw(st.booleans()):
            model = draw(st.sampled_from(["vga", "qxl", "virtio", "cirrus", "bochs"]))
            spec["video"] = {"model": model}
            if model in ("qxl", "virtio"):
                spec["video"]["monitors"] = draw(st.integers(1, 3))
                spec["video"]["heads"] = draw(st.integers(1, 2))
    if draw(st.booleans()):
        spec["sound"] = draw(st.sampled_from(["ich6", "ich9", "ac97"]))
    spec["serial_console"] = draw(st.booleans())
    spec["guest_agent"] = draw(st.booleans())
    spec["channels"] = [
        {"name": f"org.example.{w}"} for w in draw(st.lists(words, unique=True, max_size=2))
    ]
    addresses = draw(
        st.lists(
            st.tuples(st.integers(0, 255), st.integers(0, 31), st.integers(0, 7)),
            unique=True,
            max_size=2,
        )
    )
    spec["pci_devices"] = [{"address": f"0000:{b:02x}:{s:02x}.{f}"} for b, s, f in addresses]
    if usb != "none":
        ids = draw(
            st.lists(
                st.tuples(st.integers(1, 0xFFFF), st.integers(1, 0xFFFF)), unique=True, max_size=2
            )
        )
        spec["usb_devices"] = [{"vendor": f"{v:04x}", "product": f"{p:04x}"} for v, p in ids]
        if usb == "uhci-ehci-xhci":
            for dev in spec["usb_devices"]:
                dev["usb_version"] = draw(st.sampled_from([1, 2, 3]))
    spec["balloon"] = draw(
        st.sampled_from([{}, {"model": "none"}, {"stats_period_s": 0}, {"stats_period_s": 30}])
    )
    if draw(st.booleans()):
        spec["rng"] = {"source": draw(st.sampled_from(["/dev/urandom", "/dev/random"]))}
    if draw(st.booleans()):
        spec["watchdog"] = {
            "model": draw(st.sampled_from(["i6300esb", "ib700"])),
            "action": "reset",
        }
    if draw(st.booleans()):
        spec["panic"] = {"model": "hyperv" if "hyperv" in features else "isa"}
    return spec


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    c = libvirt.open("test:///default")
    yield c
    c.close()


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vmworker-hyp-") as d:
        yield Path(d)


def _schema_ok(xml: str, workdir: Path) -> str | None:
    tool = shutil.which("virt-xml-validate")
    if tool and shutil.which("xmllint"):
        f = workdir / "domain.xml"
        f.write_text(xml)
        proc = subprocess.run([tool, str(f), "domain"], capture_output=True, text=True, timeout=60)
        return None if proc.returncode == 0 else proc.stdout + proc.stderr
    if not LIBVIRT_RNG.exists():
        pytest.fail(
            "libvirt's schema is not installed (Debian libvirt-clients): run scripts/bootstrap"
        )
    schema = etree.RelaxNG(etree.parse(str(LIBVIRT_RNG)))
    return None if schema.validate(etree.fromstring(xml).getroottree()) else str(schema.error_log)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=specs())
def test_valid_spec_gives_schema_valid_xml_libvirt_defines(
    data: dict[str, Any], conn: libvirt.virConnect, workdir: Path
) -> None:
    spec = VmSpec.model_validate(data)
    xml = build_domain_xml(spec, domain_type="kvm")

    assert (
        build_domain_xml(VmSpec.model_validate_json(spec.model_dump_json()), domain_type="kvm")
        == xml
    )

    errors = _schema_ok(xml, workdir)
    assert errors is None, f"{errors}\n{xml}"

    dom = conn.defineXML(xml)
    try:
        assert dom.UUIDString() == spec.uuid
        assert dom.name() == spec.name
        back = etree.fromstring(dom.XMLDesc())
        assert len(back.findall("devices/disk")) == len(spec.disks) + len(spec.cdroms)
        assert len(back.findall("devices/interface")) == len(spec.nics)
    finally:
        dom.undefine()
