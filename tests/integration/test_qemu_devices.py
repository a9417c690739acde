"""Device operations on a running real QEMU domain: a qcow2 disk and a NIC attached and
detached, vCPUs and memory raised within the maxima, cdrom media changed. The live XML shows
each change and the events carry the device hook results."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests.support import QEMU_URI, small_vm, write_hook

pytestmark = pytest.mark.qemu

DEVICE_HOOK = '#!/bin/sh\necho "$0 saw: $(head -c 300 "$_hook_domxml")" >&2\n'


@pytest.fixture
def bridge():  # type: ignore[no-untyped-def]
    name = f"vmwb{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    yield name
    subprocess.run(["ip", "link", "del", name], check=False)


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """A storage root with an empty 32 MiB qcow2 disk (`data.qcow2`) and a small ISO
    (`tools.iso`) in it."""
    root = tmp_path / "storage"
    root.mkdir()
    disk = root / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "32M"], check=True)
    (root / "tools.iso").write_bytes(b"\0" * 2048 * 16)
    return root


def _live(vm_uuid: str) -> etree._Element:
    return etree.fromstring(libvirt.open(QEMU_URI).lookupByUUIDString(vm_uuid).XMLDesc(0).encode())


def _one(tree: etree._Element, xpath: str):  # type: ignore[no-untyped-def]
    found = tree.xpath(xpath)
    return found[0] if found else None


def _hooks_for(hooks_root: Path, *points: str) -> None:
    for point in points:
        write_hook(hooks_root, point, "50_show", DEVICE_HOOK)


def _ok(env, tap, op, vm_uuid, params):  # type: ignore[no-untyped-def]
    rid = env.publish(op, {"uuid": vm_uuid}, params=params)
    d = tap.wait_terminal(rid, timeout=60)["data"]
    assert d["phase"] == "after", (op, d.get("error"))
    return d


def test_device_operations_change_the_live_domain_and_report_device_hooks(
    env, tap, start_worker, qemu_domains, hooks_root, storage, bridge
):
    _hooks_for(
        hooks_root,
        "before_disk_hotplug",
        "before_nic_hotplug",
        "before_disk_hotunplug",
        "after_nic_hotunplug",
        "before_update_device",
        "before_set_num_of_cpus",
        "before_memory_hotplug",
    )
    disk, iso = storage / "data.qcow2", storage / "tools.iso"
    env.libvirt_uri = QEMU_URI
    start_worker(storage_roots=[storage])
    vm = {
        **small_vm("dev"),
        "max_vcpus": 2,
        "memory_mib": 128,
        "max_memory_mib": 512,
        "controllers": {"virtio_scsi": True, "usb": "qemu-xhci"},
        "cdroms": [{"bus": "ide"}],
    }
    qemu_domains.append(vm["uuid"])
    rid = env.publish("start_vm", vm)
    assert tap.wait_terminal(rid, timeout=60)["data"]["state"] == "running"
    u = vm["uuid"]

    # a qcow2 disk on virtio-scsi: attached live and persistent, then detached
    d = _ok(env, tap, "attach_disk", u, {"disk": {"path": str(disk), "bus": "virtio-scsi"}})
    (h,) = [h for h in d["hooks"] if h["point"] == "before_disk_hotplug"]
    assert h["rc"] == 0 and "<disk" in h["stderr_tail"] and "data.qcow2" in h["stderr_tail"]
    target = d["target"]
    assert target.startswith("sd")
    live = _live(u)
    src = _one(live, f"devices/disk[target/@dev='{target}']/source")
    assert src is not None and src.get("file") == str(disk)
    assert _one(live, f"devices/disk[target/@dev='{target}']/driver").get("type") == "qcow2"
    d = _ok(env, tap, "detach_disk", u, {"target": target})
    assert any(h["point"] == "before_disk_hotunplug" for h in d["hooks"])
    assert _one(_live(u), f"devices/disk[target/@dev='{target}']") is None

    # a NIC on the test's bridge: attached with a generated MAC, then detached
    # usb-net: USB unplug needs no guest OS (a PCI NIC waits for one, see the test below);
    # live only, as libvirt 9 cannot place a usb-net NIC in the persistent definition
    nic_params = {"nic": {"source": bridge, "model": "usb-net"}, "persistent": False}
    d = _ok(env, tap, "attach_nic", u, nic_params)
    mac = d["mac"]
    assert any(
        h["point"] == "before_nic_hotplug" and "<interface" in h["stderr_tail"] for h in d["hooks"]
    )
    nic = _one(_live(u), f"devices/interface[mac/@address='{mac}']")
    assert nic is not None and nic.find("source").get("bridge") == bridge
    d = _ok(env, tap, "detach_nic", u, {"mac": mac, "persistent": False})
    assert any(h["point"] == "after_nic_hotunplug" for h in d["hooks"])
    assert _one(_live(u), f"devices/interface[mac/@address='{mac}']") is None

    # vCPUs 1 -> 2 (max_vcpus), memory 128 -> 256 MiB by a DIMM (max 512)
    _ok(env, tap, "set_vcpus", u, {"count": 2})
    dom = libvirt.open(QEMU_URI).lookupByUUIDString(u)
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 2
    d = _ok(env, tap, "set_memory", u, {"memory_mib": 256})
    (h,) = [h for h in d["hooks"] if h["point"] == "before_memory_hotplug"]
    assert "dimm" in h["stderr_tail"]
    dimm = _one(_live(u), "devices/memory[@model='dimm']/target/size")
    assert dimm is not None and int(dimm.text) == 128 * 1024
    assert int(_live(u).find("memory").text) == 256 * 1024

    # cdrom media: insert, then eject
    cd_target = _one(_live(u), "devices/disk[@device='cdrom']/target").get("dev")
    _ok(env, tap, "update_device", u, {"device": "cdrom", "target": cd_target, "path": str(iso)})
    src = _one(_live(u), f"devices/disk[target/@dev='{cd_target}']/source")
    assert src is not None and src.get("file") == str(iso)
    _ok(env, tap, "update_device", u, {"device": "cdrom", "target": cd_target, "path": None})
    left = _one(_live(u), f"devices/disk[target/@dev='{cd_target}']/source")
    assert left is None or not left.get("file"), etree.tostring(left)


def test_nic_update_and_a_pci_unplug_the_guest_never_acknowledges(
    env, tap, start_worker, qemu_domains, bridge
):
    """libvirt says 'detached' while a PCI NIC waits for the guest OS; we say what is true."""
    env.libvirt_uri = QEMU_URI
    start_worker()
    vm = small_vm("pci")
    qemu_domains.append(vm["uuid"])
    tap.wait_terminal(env.publish("start_vm", vm), timeout=60)
    d = _ok(env, tap, "attach_nic", vm["uuid"], {"nic": {"source": bridge}})
    # link state changes live, no guest needed
    mac = d["mac"]
    _ok(env, tap, "update_device", vm["uuid"], {"device": "nic", "mac": mac, "link_state": "down"})
    nic = _one(_live(vm["uuid"]), f"devices/interface[mac/@address='{mac}']")
    assert nic.find("link").get("state") == "down"
    # QoS: into the persistent definition; live it needs the kernel's tc qdiscs (sch_htb...)
    qos = {"inbound": {"average_kbytes": 1000}, "outbound": {"average_kbytes": 500}}
    _ok(
        env,
        tap,
        "update_device",
        vm["uuid"],
        {"device": "nic", "mac": mac, "bandwidth": qos, "live": False},
    )
    dom = libvirt.open(QEMU_URI).lookupByUUIDString(vm["uuid"])
    conf = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    nic = _one(conf, f"devices/interface[mac/@address='{mac}']")
    assert nic.find("bandwidth/inbound").get("average") == "1000"
    assert nic.find("bandwidth/outbound").get("average") == "500"
    rid = env.publish(
        "update_device",
        {"uuid": vm["uuid"]},
        params={"device": "nic", "mac": mac, "bandwidth": qos},
    )
    live_qos = tap.wait_terminal(rid, timeout=60)["data"]
    if live_qos["phase"] == "fail":  # a host without the qdisc modules: libvirt's own reason
        assert live_qos["error"]["source"] == "libvirt" and "tc" in live_qos["error"]["message"]
    else:
        nic = _one(_live(vm["uuid"]), f"devices/interface[mac/@address='{mac}']")
        assert nic.find("bandwidth/inbound").get("average") == "1000"
    rid = env.publish("detach_nic", {"uuid": vm["uuid"]}, params={"mac": d["mac"], "wait_s": 1})
    fail = tap.wait_terminal(rid, timeout=60)["data"]
    assert fail["phase"] == "fail" and fail["error"]["code"] == "unplug_pending"
    assert d["mac"] in fail["error"]["message"]


def test_disk_outside_the_storage_roots_is_refused(env, tap, start_worker, test_domains, tmp_path):
    root = tmp_path / "ok"
    root.mkdir()
    start_worker(storage_roots=[root])
    vm = {"uuid": str(uuid.uuid4()), "name": "vmw-roots", "vcpus": 1, "memory_mib": 64}
    test_domains.append(vm["uuid"])
    tap.wait_terminal(env.publish("start_vm", vm))
    outside = tmp_path / "elsewhere.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(outside), "1M"], check=True)
    for path, says in ((root / ".." / "elsewhere.qcow2", "'..'"), (outside, "storage root")):
        rid = env.publish("attach_disk", {"uuid": vm["uuid"]}, params={"disk": {"path": str(path)}})
        fail = tap.wait_terminal(rid)["data"]
        assert fail["phase"] == "fail" and fail["error"]["source"] == "validation"
        assert says in fail["error"]["message"] and "disk.path" in fail["error"]["message"]


def test_device_operations_on_a_shut_off_vm_change_its_definition_only(
    env, tap, start_worker, qemu_domains, storage, bridge
):
    """docs/protocol.md, "Operations and VM states": a shut-off VM's devices are its definition."""
    disk, iso = storage / "data.qcow2", storage / "tools.iso"
    env.libvirt_uri = QEMU_URI
    start_worker(storage_roots=[storage])
    vm = {**small_vm("off"), "cdroms": [{"bus": "sata"}]}
    qemu_domains.append(vm["uuid"])
    assert tap.wait_terminal(env.publish("define_vm", vm), timeout=60)["data"]["phase"] == "after"
    u = vm["uuid"]
    dom = libvirt.open(QEMU_URI).lookupByUUIDString(u)

    def conf() -> etree._Element:
        return etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())

    steps = []
    d = _ok(env, tap, "attach_disk", u, {"disk": {"path": str(disk)}})
    target = d["target"]
    assert _one(conf(), f"devices/disk[target/@dev='{target}']/source").get("file") == str(disk)
    steps.append(d)
    d = _ok(env, tap, "attach_nic", u, {"nic": {"source": bridge}})
    mac = d["mac"]
    assert _one(conf(), f"devices/interface[mac/@address='{mac}']") is not None
    steps.append(d)
    cd = _one(conf(), "devices/disk[@device='cdrom']/target").get("dev")
    steps.append(
        _ok(env, tap, "update_device", u, {"device": "cdrom", "target": cd, "path": str(iso)})
    )
    assert _one(conf(), f"devices/disk[target/@dev='{cd}']/source").get("file") == str(iso)
    steps.append(_ok(env, tap, "detach_nic", u, {"mac": mac}))
    assert _one(conf(), f"devices/interface[mac/@address='{mac}']") is None
    steps.append(_ok(env, tap, "detach_disk", u, {"target": target}))
    assert _one(conf(), f"devices/disk[target/@dev='{target}']") is None
    assert [(s["state"], s["noop"]) for s in steps] == [("shutoff", False)] * 5
    assert not dom.isActive()
