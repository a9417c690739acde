"""What each section of the domain XML says for a given spec."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree

from handlers.domxml import XMLNS, build_domain_xml, build_nic_xml, stable_mac
from handlers.errors import OpError
from handlers.spec import NicSpec, VmSpec

UUID = "6f1c1a0e-3c1b-4c55-9d0e-2a7b5f2c9e01"
NS = {"vmw": XMLNS}


def _dom(allow_raw: bool = False, **fields: Any) -> etree._Element:
    spec = VmSpec.model_validate({"uuid": UUID, "name": "s1", **fields})
    return etree.fromstring(build_domain_xml(spec, domain_type="kvm", allow_raw=allow_raw))


def _attrs(root: etree._Element, path: str, attr: str) -> list[str | None]:
    return [el.get(attr) for el in root.iterfind(path)]


# --- identity, metadata, lifecycle


def test_metadata_keys_live_in_our_namespace_sorted() -> None:
    root = _dom(description="Web server", metadata={"tenant": "acme", "cp_vm_id": "vm-42"})
    assert root.findtext("description") == "Web server"
    vm = root.find("metadata/vmw:vm", NS)
    assert [etree.QName(c).localname for c in vm] == ["cp_vm_id", "tenant"]
    assert vm.findtext("vmw:cp_vm_id", namespaces=NS) == "vm-42"


def test_lifecycle_actions_come_from_the_spec() -> None:
    root = _dom(on_crash="coredump-restart", on_reboot="destroy")
    assert root.findtext("on_crash") == "coredump-restart"
    assert root.findtext("on_reboot") == "destroy"
    assert root.findtext("on_poweroff") == "destroy"


# --- CPU and memory


def test_vcpu_hotplug_room_gives_current_and_max() -> None:
    root = _dom(vcpus=2, max_vcpus=8)
    assert root.findtext("vcpu") == "8"
    assert root.find("vcpu").get("current") == "2"
    assert _dom(vcpus=2).find("vcpu").get("current") is None


def test_cpu_modes() -> None:
    assert _dom().find("cpu") is None
    assert _dom(cpu={}).find("cpu").get("mode") == "host-model"
    root = _dom(cpu={"mode": "custom", "model": "EPYC", "fallback": "forbid"})
    assert root.findtext("cpu/model") == "EPYC"
    assert root.find("cpu/model").get("fallback") == "forbid"
    root = _dom(cpu={"mode": "host-passthrough", "features": [{"name": "vmx"}]})
    assert root.find("cpu/feature").attrib == {"policy": "require", "name": "vmx"}


def test_topology_is_written_as_given() -> None:
    root = _dom(vcpus=4, cpu={"topology": {"sockets": 2, "cores": 2, "threads": 1}})
    topo = root.find("cpu/topology")
    assert (topo.get("sockets"), topo.get("cores"), topo.get("threads")) == ("2", "2", "1")


def test_memory_hotplug_adds_max_memory_and_a_numa_cell() -> None:
    root = _dom(vcpus=2, max_vcpus=4, memory_mib=1024, max_memory_mib=8192, memory_slots=8)
    max_mem = root.find("maxMemory")
    assert (max_mem.text, max_mem.get("slots"), max_mem.get("unit")) == ("8192", "8", "MiB")
    cell = root.find("cpu/numa/cell")
    assert (cell.get("cpus"), cell.get("memory")) == ("0-3", "1024")


def test_given_numa_cells_are_kept() -> None:
    cells = [{"cpus": "0-1", "memory_mib": 256}, {"cpus": "2-3", "memory_mib": 768}]
    root = _dom(vcpus=4, memory_mib=1024, cpu={"numa": cells})
    assert _attrs(root, "cpu/numa/cell", "cpus") == ["0-1", "2-3"]
    assert _attrs(root, "cpu/numa/cell", "id") == ["0", "1"]


def test_hugepages_and_cpu_shares() -> None:
    root = _dom(memory_mib=2048, hugepages={"size_kib": 1048576}, cpu_shares=512)
    assert root.find("memoryBacking/hugepages/page").get("size") == "1048576"
    assert root.findtext("cputune/shares") == "512"
    assert _dom(hugepages={}).find("memoryBacking/hugepages/page") is None


# --- os, features, clock


def test_bios_boot_order_and_menu() -> None:
    root = _dom(os={"machine": "pc", "boot": ["cdrom", "hd"], "boot_menu": True})
    assert root.find("os/type").get("machine") == "pc"
    assert _attrs(root, "os/boot", "dev") == ["cdrom", "hd"]
    assert root.find("os/bootmenu").get("enable") == "yes"
    assert root.find("os/loader") is None


def test_uefi_without_loader_lets_libvirt_pick_secure_firmware() -> None:
    root = _dom(os={"machine": "q35", "firmware": "uefi", "secure_boot": True})
    assert root.find("os").get("firmware") == "efi"
    feats = {f.get("name"): f.get("enabled") for f in root.iterfind("os/firmware/feature")}
    assert feats == {"secure-boot": "yes", "enrolled-keys": "yes"}
    assert root.find("features/smm").get("state") == "on"


def test_uefi_with_loader_and_nvram() -> None:
    os_ = {
        "firmware": "uefi",
        "loader": "/usr/share/OVMF/OVMF_CODE.fd",
        "nvram": "/var/lib/vm/s1_VARS.fd",
        "nvram_template": "/usr/share/OVMF/OVMF_VARS.fd",
    }
    root = _dom(os=os_)
    loader = root.find("os/loader")
    assert (loader.text, loader.get("type"), loader.get("secure")) == (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "pflash",
        "no",
    )
    assert root.findtext("os/nvram") == "/var/lib/vm/s1_VARS.fd"
    assert root.find("os/nvram").get("template") == "/usr/share/OVMF/OVMF_VARS.fd"
    assert root.find("features/smm") is None


def test_features() -> None:
    root = _dom()
    assert [c.tag for c in root.find("features")] == ["acpi", "apic"]
    root = _dom(features={"acpi": False, "pae": True, "kvm_hidden": True})
    assert [c.tag for c in root.find("features")] == ["apic", "pae", "kvm"]
    assert root.find("features/kvm/hidden").get("state") == "on"


def test_hyperv_enlightenments() -> None:
    root = _dom(features={"hyperv": {"spinlocks": None, "ipi": False, "vendor_id": "KVMKVMKVM"}})
    hv = {c.tag: c.attrib for c in root.find("features/hyperv")}
    assert hv["relaxed"]["state"] == "on"
    assert hv["spinlocks"] == {"state": "off"}
    assert hv["ipi"]["state"] == "off"
    assert hv["vendor_id"] == {"state": "on", "value": "KVMKVMKVM"}


def test_clock_default_timers_and_windows_clock() -> None:
    root = _dom()
    assert root.find("clock").get("offset") == "utc"
    assert _attrs(root, "clock/timer", "name") == ["rtc", "pit", "hpet"]
    root = _dom(clock={"offset": "localtime", "timers": [{"name": "hypervclock", "present": True}]})
    assert root.find("clock").get("offset") == "localtime"
    assert root.find("clock/timer").attrib == {"name": "hypervclock", "present": "yes"}
    assert _dom(clock={"timers": []}).find("clock/timer") is None


# --- disks and CD-ROMs


def test_disk_options_are_written() -> None:
    disk = {
        "path": "/img/a.raw",
        "format": "raw",
        "bus": "virtio-scsi",
        "cache": "none",
        "io": "native",
        "discard": "unmap",
        "iotune": {"total_bytes_sec": 1000, "read_iops_sec": 10},
        "shareable": True,
        "readonly": True,
        "serial": "S1",
        "wwn": "0x5000C50015EA71AC",
        "boot_order": 1,
    }
    d = _dom(disks=[disk]).find("devices/disk")
    assert d.find("driver").attrib == {
        "name": "qemu",
        "type": "raw",
        "cache": "none",
        "io": "native",
        "discard": "unmap",
    }
    assert d.find("target").attrib == {"dev": "sda", "bus": "scsi"}
    assert [c.tag for c in d.find("iotune")] == ["total_bytes_sec", "read_iops_sec"]
    assert d.find("shareable") is not None and d.find("readonly") is not None
    assert (d.findtext("serial"), d.findtext("wwn")) == ("S1", "5000c50015ea71ac")
    assert d.find("boot").get("order") == "1"


def test_network_disks() -> None:
    auth = {"username": "admin", "secret_uuid": UUID}
    disks = [
        {
            "type": "iscsi",
            "iscsi": {"host": "10.0.0.5", "target": "iqn.2003-01.org.x:t"},
            "auth": auth,
        },
        {"type": "rbd", "rbd": {"pool": "vms", "image": "s1-root", "hosts": [{"name": "mon1"}]}},
    ]
    iscsi, rbd = _dom(disks=disks).iterfind("devices/disk")
    assert iscsi.get("type") == "network"
    assert iscsi.find("source").attrib == {"protocol": "iscsi", "name": "iqn.2003-01.org.x:t/0"}
    assert iscsi.find("source/host").attrib == {"name": "10.0.0.5", "port": "3260"}
    assert iscsi.find("source/auth/secret").attrib == {"type": "iscsi", "uuid": UUID}
    assert rbd.find("source").get("name") == "vms/s1-root"
    assert rbd.find("source/auth") is None


def test_block_disk_uses_dev() -> None:
    d = _dom(disks=[{"type": "block", "path": "/dev/vg0/s1"}]).find("devices/disk")
    assert (d.get("type"), d.find("source").get("dev")) == ("block", "/dev/vg0/s1")


def test_cdroms_empty_or_with_iso() -> None:
    root = _dom(cdroms=[{}, {"path": "/iso/x.iso", "bus": "ide", "boot_order": 1}])
    empty, iso = root.iterfind("devices/disk")
    assert empty.get("device") == "cdrom" and empty.find("source") is None
    assert empty.find("target").attrib == {"dev": "sda", "bus": "sata"}
    assert iso.find("source").get("file") == "/iso/x.iso"
    assert iso.find("target").attrib == {"dev": "hda", "bus": "ide"}
    assert iso.find("readonly") is not None


def test_virtio_scsi_controller_is_added_when_needed_or_asked() -> None:
    scsi = "devices/controller[@type='scsi']"
    assert _dom().find(scsi) is None
    assert _dom(cdroms=[{"bus": "virtio-scsi"}]).find(scsi).get("model") == "virtio-scsi"
    root = _dom(controllers={"virtio_scsi": True, "virtio_scsi_queues": 4})
    assert root.find(scsi + "/driver").get("queues") == "4"


# --- NICs


def test_nic_without_mac_gets_a_stable_one() -> None:
    nics = [{"source": "br0"}, {"source": "br1"}]
    a = _attrs(_dom(nics=nics), "devices/interface/mac", "address")
    b = _attrs(_dom(nics=nics), "devices/interface/mac", "address")
    assert a == b == [stable_mac(UUID, 0), stable_mac(UUID, 1)]
    assert a[0] != a[1] and all(m.startswith("52:54:00:") for m in a if m)


def test_nic_types() -> None:
    nics = [
        {"type": "bridge", "source": "br0"},
        {"type": "network", "source": "default"},
        {"type": "direct", "source": "eth0"},
    ]
    root = _dom(nics=nics)
    sources = [s.attrib for s in root.iterfind("devices/interface/source")]
    assert sources == [{"bridge": "br0"}, {"network": "default"}, {"dev": "eth0", "mode": "bridge"}]


def test_nic_qos_filter_mtu_link() -> None:
    nic = {
        "source": "br0",
        "mac": "52:54:00:00:00:01",
        "bandwidth": {"outbound": {"average_kbytes": 128, "burst_kbytes": 256}},
        "filterref": {"ip": ["10.0.0.7"], "parameters": {"MAC": "52:54:00:00:00:01"}},
        "mtu": 1450,
        "link_state": "down",
        "queues": 2,
        "target_dev": "tap-s1-0",
    }
    i = _dom(nics=[nic]).find("devices/interface")
    assert i.find("bandwidth/inbound") is None
    assert i.find("bandwidth/outbound").attrib == {"average": "128", "burst": "256"}
    assert i.find("filterref").get("filter") == "clean-traffic"
    params = [(p.get("name"), p.get("value")) for p in i.iterfind("filterref/parameter")]
    assert params == [("IP", "10.0.0.7"), ("MAC", "52:54:00:00:00:01")]
    assert i.find("mtu").get("size") == "1450"
    assert i.find("link").get("state") == "down"
    assert i.find("driver").attrib == {"name": "vhost", "queues": "2"}
    assert i.find("target").get("dev") == "tap-s1-0"


def test_nic_hotplug_xml() -> None:
    el = etree.fromstring(build_nic_xml(NicSpec(source="br0"), mac=stable_mac(UUID, 3)))
    assert el.find("mac").get("address") == stable_mac(UUID, 3)
    el = etree.fromstring(build_nic_xml(NicSpec(source="br0")))
    assert el.find("mac") is None


# --- display, USB, passthrough


def test_vnc_graphics_brings_vga_and_a_usb_tablet() -> None:
    root = _dom(graphics={"password": "s3cret"})
    g = root.find("devices/graphics")
    assert g.attrib == {"type": "vnc", "port": "-1", "autoport": "yes", "passwd": "s3cret"}
    assert g.find("listen").attrib == {"type": "address", "address": "127.0.0.1"}
    assert root.find("devices/video/model").get("type") == "vga"
    assert root.find("devices/input").attrib == {"type": "tablet", "bus": "usb"}


def test_no_graphics_means_no_video_and_no_tablet() -> None:
    root = _dom()
    assert root.find("devices/graphics") is None
    assert root.find("devices/video") is None
    assert root.find("devices/input") is None


def test_fixed_port() -> None:
    g = _dom(graphics={"port": 5910}).find("devices/graphics")
    assert (g.get("port"), g.get("autoport")) == ("5910", "no")


def test_spice_defaults_are_seed_003s() -> None:
    root = _dom(graphics={"type": "spice", "listen": "0.0.0.0"})
    g = root.find("devices/graphics")
    opts = {c.tag: dict(c.attrib) for c in g if c.tag != "listen"}
    assert opts == {
        "image": {"compression": "auto_glz"},
        "jpeg": {"compression": "always"},
        "zlib": {"compression": "never"},
        "playback": {"compression": "off"},
        "streaming": {"mode": "filter"},
        "mouse": {"mode": "client"},
        "clipboard": {"copypaste": "no"},
        "filetransfer": {"enable": "no"},
    }
    assert root.find("devices/video/model").get("type") == "qxl"
    agent = root.find("devices/channel[@type='spicevmc']/target")
    assert agent.get("name") == "com.redhat.spice.0"


def test_qxl_monitors_give_one_video_device_each() -> None:
    root = _dom(graphics={"type": "spice"}, video={"model": "qxl", "monitors": 3})
    assert _attrs(root, "devices/video/model", "primary") == ["yes", None, None]


def test_usb_redirection_slots() -> None:
    root = _dom(graphics={"type": "spice"}, usb_redirect=4)
    assert len(root.findall("devices/redirdev[@type='spicevmc']")) == 4


@pytest.mark.parametrize(
    ("layout", "models"),
    [
        ("ich9", ["ich9-ehci1", "ich9-uhci1", "ich9-uhci2", "ich9-uhci3"]),
        ("uhci-ehci-xhci", ["piix3-uhci", "ehci", "nec-xhci"]),
        ("qemu-xhci", ["qemu-xhci"]),
        ("none", ["none"]),
    ],
)
def test_usb_controller_layouts(layout: str, models: list[str]) -> None:
    root = _dom(controllers={"usb": layout})
    assert _attrs(root, "devices/controller[@type='usb']", "model") == models


def test_ich9_companions_share_bus_zero_with_their_start_ports() -> None:
    root = _dom()
    ctrls = root.findall("devices/controller[@type='usb']")
    assert {c.get("index") for c in ctrls} == {"0"}
    assert [c.find("master").get("startport") for c in ctrls[1:]] == ["0", "2", "4"]


def test_tablet_uses_virtio_without_usb() -> None:
    root = _dom(graphics={}, controllers={"usb": "none"})
    assert root.find("devices/input").get("bus") == "virtio"


def test_pci_passthrough() -> None:
    root = _dom(pci_devices=[{"address": "af:1f.7", "rom_bar": False, "managed": False}])
    h = root.find("devices/hostdev")
    assert (h.get("type"), h.get("managed")) == ("pci", "no")
    assert h.find("driver").get("name") == "vfio"
    assert h.find("source/address").attrib == {
        "domain": "0x0000",
        "bus": "0xaf",
        "slot": "0x1f",
        "function": "0x7",
    }
    assert h.find("rom").get("bar") == "off"


def test_usb_passthrough_on_the_controller_of_its_version() -> None:
    dev = {"vendor": "046d", "product": "c52b", "bus": 1, "device": 4, "usb_version": 3}
    root = _dom(controllers={"usb": "uhci-ehci-xhci"}, usb_devices=[dev])
    h = root.find("devices/hostdev")
    assert h.find("source/vendor").get("id") == "0x046d"
    assert h.find("source/address").attrib == {"bus": "1", "device": "4"}
    assert h.find("address").attrib == {"type": "usb", "bus": "2"}


# --- consoles, channels, other devices


def test_serial_console_and_guest_agent_can_be_turned_off() -> None:
    root = _dom(serial_console=False, guest_agent=False)
    assert root.find("devices/serial") is None and root.find("devices/console") is None
    assert root.find("devices/channel") is None


def test_extra_channels() -> None:
    root = _dom(channels=[{"name": "org.example.a", "path": "/run/vm/a.sock"}, {"name": "b"}])
    chans = root.findall("devices/channel")
    assert [c.find("target").get("name") for c in chans] == [
        "org.qemu.guest_agent.0",
        "org.example.a",
        "b",
    ]
    assert chans[1].find("source").get("path") == "/run/vm/a.sock"


def test_balloon_stats() -> None:
    assert _dom().find("devices/memballoon/stats").get("period") == "10"
    assert _dom(balloon={"stats_period_s": 0}).find("devices/memballoon/stats") is None
    assert _dom(balloon={"model": "none"}).find("devices/memballoon").attrib == {"model": "none"}


def test_rng_watchdog_panic() -> None:
    root = _dom(
        rng={"source": "/dev/random", "rate_bytes": 1024},
        watchdog={"model": "ib700", "action": "inject-nmi"},
        panic={},
    )
    assert root.findtext("devices/rng/backend") == "/dev/random"
    assert root.find("devices/rng/rate").attrib == {"bytes": "1024"}
    assert root.find("devices/watchdog").attrib == {"model": "ib700", "action": "inject-nmi"}
    assert root.find("devices/panic").get("model") == "isa"


def test_emulator_comes_first_in_devices() -> None:
    root = _dom(emulator="/usr/bin/qemu-system-x86_64", disks=[{"path": "/a", "format": "raw"}])
    assert root.find("devices")[0].tag == "emulator"
    assert root.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"


# --- raw XML


QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
RAW = (
    f"<domain xmlns:qemu='{QEMU_NS}'>"
    "<devices><hub type='usb'/></devices>"
    "<metadata><x:site xmlns:x='urn:site'>eu-1</x:site></metadata>"
    "<qemu:commandline><qemu:arg value='-no-hpet'/></qemu:commandline>"
    "</domain>"
)


def test_raw_xml_is_refused_unless_allowed() -> None:
    with pytest.raises(OpError) as exc:
        _dom(raw_xml=RAW)
    assert exc.value.source == "validation"
    assert exc.value.code == "raw_xml_not_allowed"
    assert exc.value.details["field"] == "raw_xml"


def test_raw_xml_is_merged_when_allowed() -> None:
    root = _dom(allow_raw=True, raw_xml=RAW)
    assert root.find("devices/hub").get("type") == "usb"
    assert root.find("metadata/{urn:site}site").text == "eu-1"
    assert root.find(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg").get("value") == "-no-hpet"
    assert root.find("metadata/vmw:vm", NS) is not None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("<domain><clock offset='localtime'/></domain>", "<clock> is built from the spec"),
        ("<domain type='xen'/>", "<domain> attributes come from the spec"),
        ("<devices/>", "root element must be <domain>"),
        ("<domain><devices>", "not well-formed"),
        (
            "<!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><domain><title>&x;</title></domain>",
            "DOCTYPE",
        ),
        (
            f"<domain><metadata><v:vm xmlns:v='{XMLNS}'/></metadata></domain>",
            "vmworker namespace",
        ),
    ],
)
def test_bad_raw_xml_is_refused_naming_raw_xml(raw: str, reason: str) -> None:
    with pytest.raises(OpError) as exc:
        _dom(allow_raw=True, raw_xml=raw)
    assert exc.value.message.startswith("raw_xml: ")
    assert reason in exc.value.message


def test_unknown_domain_type_is_refused() -> None:
    spec = VmSpec.model_validate({"uuid": UUID, "name": "s1"})
    with pytest.raises(OpError, match="domain_type"):
        build_domain_xml(spec, domain_type="xen")
