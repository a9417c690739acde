"""Every cross-field rule of the spec rejects its bad case with a message naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from handlers.spec import RULES, VmSpec

UUID = "6f1c1a0e-3c1b-4c55-9d0e-2a7b5f2c9e01"
BASE: dict[str, Any] = {"uuid": UUID, "name": "web-1"}
FILE = {"path": "/var/lib/vm/a.qcow2"}
SECRET = {"username": "u", "secret_uuid": UUID}
SPICE = {"type": "spice"}

# (rule function, spec fields on top of BASE, text the error must contain: the field's name)
CASES: list[tuple[str, dict[str, Any], str]] = [
    # CPU
    ("_custom_needs_model", {"cpu": {"mode": "custom"}}, "model: required when mode is custom"),
    (
        "_cpus_ranges_ascend",
        {"cpu": {"numa": [{"cpus": "3-1", "memory_mib": 512}]}},
        "cpus: range '3-1' runs backwards",
    ),
    ("_custom_needs_model", {"cpu": {"model": "EPYC"}}, "model: only allowed when mode is custom"),
    (
        "_unique_cpu_features",
        {"cpu": {"features": [{"name": "vmx"}, {"name": "vmx"}]}},
        "features[1].name",
    ),
    ("_max_vcpus", {"vcpus": 4, "max_vcpus": 2}, "max_vcpus: 2 is below vcpus 4"),
    (
        "_topology_matches_vcpus",
        {"vcpus": 4, "cpu": {"topology": {"sockets": 1, "cores": 2, "threads": 1}}},
        "cpu.topology",
    ),
    (
        "_numa_cells_cover_vcpus",
        {"vcpus": 2, "memory_mib": 512, "cpu": {"numa": [{"cpus": "0-2", "memory_mib": 512}]}},
        "cpu.numa[0].cpus: vCPU 2 does not exist",
    ),
    (
        "_numa_cells_cover_vcpus",
        {
            "vcpus": 2,
            "memory_mib": 512,
            "cpu": {"numa": [{"cpus": "0-1", "memory_mib": 256}, {"cpus": "1", "memory_mib": 256}]},
        },
        "cpu.numa[1].cpus: vCPU 1 is in two cells",
    ),
    (
        "_numa_cells_cover_vcpus",
        {"vcpus": 2, "memory_mib": 512, "cpu": {"numa": [{"cpus": "0", "memory_mib": 512}]}},
        "cpu.numa: vCPUs [1] are in no cell",
    ),
    (
        "_numa_memory_adds_up",
        {"vcpus": 1, "memory_mib": 512, "cpu": {"numa": [{"cpus": "0", "memory_mib": 256}]}},
        "cpu.numa: cells hold 256 MiB but memory_mib is 512",
    ),
    # memory
    ("_max_memory", {"memory_mib": 1024, "max_memory_mib": 512}, "max_memory_mib"),
    ("_hugepages_fit", {"memory_mib": 1536, "hugepages": {"size_kib": 1048576}}, "hugepages"),
    # os
    ("_uefi_only_fields", {"os": {"loader": "/usr/share/OVMF/OVMF_CODE.fd"}}, "loader: only"),
    ("_uefi_only_fields", {"os": {"nvram": "/var/lib/vm/a_VARS.fd"}}, "nvram: only"),
    (
        "_secure_boot_needs_q35",
        {"os": {"firmware": "uefi", "secure_boot": True, "machine": "pc"}},
        "secure_boot: needs a q35",
    ),
    ("_boot_devices_unique", {"os": {"boot": ["hd", "hd"]}}, "boot: lists a device twice"),
    ("_menu_timeout_needs_menu", {"os": {"boot_menu_timeout_ms": 10}}, "boot_menu_timeout_ms"),
    # features and clock
    (
        "_uefi_needs_acpi",
        {"os": {"firmware": "uefi"}, "features": {"acpi": False}},
        "features.acpi: UEFI firmware needs ACPI",
    ),
    (
        "_timer_tickpolicy",
        {"clock": {"timers": [{"name": "rtc", "tickpolicy": "merge"}]}},
        "tickpolicy: merge is not supported on the rtc timer",
    ),
    (
        "_timer_tickpolicy",
        {"clock": {"timers": [{"name": "pit", "tickpolicy": "merge"}]}},
        "tickpolicy: merge is not supported on the pit timer",
    ),
    ("_hyperv_dependencies", {"features": {"hyperv": {"vpindex": False}}}, "synic: needs vpindex"),
    (
        "_hyperv_dependencies",
        {"features": {"hyperv": {"synic": False, "stimer": True}}},
        "stimer: needs synic",
    ),
    (
        "_timer_tickpolicy",
        {"clock": {"timers": [{"name": "kvmclock", "tickpolicy": "delay"}]}},
        "tickpolicy: not allowed on the kvmclock timer",
    ),
    (
        "_timers_unique",
        {"clock": {"timers": [{"name": "rtc"}, {"name": "rtc"}]}},
        "timers[1].name",
    ),
    # disks
    ("_disk_source_matches_type", {"disks": [{"type": "file"}]}, "path: required for a file disk"),
    (
        "_disk_source_matches_type",
        {"disks": [{"type": "rbd", "path": "/dev/sdb", "rbd": {"pool": "p", "image": "i"}}]},
        "path: not allowed on a rbd disk",
    ),
    (
        "_disk_source_matches_type",
        {"disks": [{"type": "iscsi"}]},
        "iscsi: required for a iscsi disk",
    ),
    ("_auth_only_on_network_disks", {"disks": [{**FILE, "auth": SECRET}]}, "auth: only for"),
    ("_native_io_needs_direct_cache", {"disks": [{**FILE, "io": "native"}]}, "io: native needs"),
    (
        "_native_io_needs_direct_cache",
        {"disks": [{**FILE, "io": "native", "cache": "writeback"}]},
        "io: native needs",
    ),
    ("_wwn_needs_scsi_or_ide", {"disks": [{**FILE, "wwn": "5000c50015ea71ac"}]}, "wwn: only"),
    ("_no_readonly_ide_sata", {"disks": [{**FILE, "bus": "sata", "readonly": True}]}, "readonly"),
    (
        "_shareable_not_qcow2",
        {"disks": [{**FILE, "shareable": True, "format": "qcow2"}]},
        "shareable: a shared disk must be raw",
    ),
    ("_target_matches_bus", {"disks": [{**FILE, "target": "sdb"}]}, "target: 'sdb' does not fit"),
    (
        "_target_matches_bus",
        {"disks": [{**FILE, "bus": "ide", "target": "hde"}]},
        "target: 'hde' is not an IDE name",
    ),
    ("_cdrom_target_matches_bus", {"cdroms": [{"target": "hda"}]}, "target: 'hda' does not fit"),
    (
        "_iotune_not_empty",
        {"disks": [{**FILE, "iotune": {}}]},
        "iotune: set at least one limit",
    ),
    (
        "_iotune_total_excludes_pair",
        {"disks": [{**FILE, "iotune": {"total_iops_sec": 100, "read_iops_sec": 50}}]},
        "total_iops_sec: cannot be set with read_iops_sec",
    ),
    (
        "_targets_unique",
        {"disks": [{**FILE, "target": "vdb"}, {**FILE, "target": "vdb"}]},
        "disks[1].target: 'vdb' is also used by disks[0].target",
    ),
    (
        "_ide_fits",
        {"disks": [{**FILE, "bus": "ide"}] * 3, "cdroms": [{"bus": "ide"}] * 2},
        "cdroms[1].bus: more than 4 IDE devices",
    ),
    (
        "_no_ide_on_q35",
        {"os": {"machine": "q35"}, "cdroms": [{"bus": "ide"}]},
        "cdroms[0].bus: ide is not available on a q35 machine",
    ),
    (
        "_virtio_scsi_controller",
        {"disks": [{**FILE, "bus": "virtio-scsi"}], "controllers": {"virtio_scsi": False}},
        "disks[0].bus: virtio-scsi, but controllers.virtio_scsi is false",
    ),
    (
        "_scsi_queues_need_controller",
        {"controllers": {"virtio_scsi": False, "virtio_scsi_queues": 2}},
        "controllers.virtio_scsi_queues",
    ),
    # boot order
    (
        "_boot_order_one_way",
        {"os": {"boot": ["hd"]}, "disks": [{**FILE, "boot_order": 1}]},
        "disks[0].boot_order: not allowed together with os.boot",
    ),
    (
        "_boot_orders_unique",
        {"disks": [{**FILE, "boot_order": 1}], "nics": [{"source": "br0", "boot_order": 1}]},
        "nics[0].boot_order: boot order 1 is also used by disks[0].boot_order",
    ),
    # NICs
    ("_host_ifname", {"nics": [{"source": "a-very-long-bridge0"}]}, "source: a host interface"),
    (
        "_mtu_not_on_direct",
        {"nics": [{"type": "direct", "source": "eth0", "mtu": 9000}]},
        "mtu: not supported on direct NICs",
    ),
    ("_mode_only_direct", {"nics": [{"source": "br0", "mode": "vepa"}]}, "mode: only for direct"),
    (
        "_queues_need_virtio",
        {"nics": [{"source": "br0", "model": "e1000", "queues": 2}]},
        "queues: needs model virtio",
    ),
    (
        "_target_dev_not_reserved",
        {"nics": [{"source": "br0", "target_dev": "vnet7"}]},
        "target_dev: 'vnet7' uses a prefix libvirt reserves",
    ),
    (
        "_peak_not_below_average",
        {
            "nics": [
                {
                    "source": "br0",
                    "bandwidth": {"inbound": {"average_kbytes": 100, "peak_kbytes": 50}},
                }
            ]
        },
        "peak_kbytes: lower than average_kbytes",
    ),
    ("_bandwidth_not_empty", {"nics": [{"source": "br0", "bandwidth": {}}]}, "bandwidth: set"),
    (
        "_filter_ip_in_ip",
        {"nics": [{"source": "br0", "filterref": {"parameters": {"IP": "10.0.0.1"}}}]},
        "parameters: put IP addresses in ip",
    ),
    (
        "_unique_macs",
        {
            "nics": [
                {"source": "br0", "mac": "52:54:00:00:00:01"},
                {"source": "br1", "mac": "52:54:00:00:00:01"},
            ]
        },
        "nics[1].mac: 52:54:00:00:00:01 is also nics[0].mac",
    ),
    # display
    (
        "_vnc_password_length",
        {"graphics": {"password": "123456789"}},
        "password: VNC passwords have at most 8 characters",
    ),
    ("_spice_options_need_spice", {"graphics": {"spice": {}}}, "spice: options only apply"),
    (
        "_multihead_needs_qxl_or_virtio",
        {"video": {"model": "vga", "monitors": 2}},
        "monitors: more than one needs model qxl or virtio",
    ),
    (
        "_multihead_needs_qxl_or_virtio",
        {"video": {"model": "bochs", "heads": 2}},
        "heads: more than one needs model qxl or virtio",
    ),
    (
        "_channel_names",
        {"channels": [{"name": "org.qemu.guest_agent.0"}]},
        "channels[0].name: 'org.qemu.guest_agent.0' is already in use",
    ),
    (
        "_channel_names",
        {"graphics": SPICE, "channels": [{"name": "com.redhat.spice.0"}]},
        "channels[0].name",
    ),
    (
        "_channel_names",
        {"channels": [{"name": "a.b"}, {"name": "a.b"}]},
        "channels[1].name: 'a.b' is already in use",
    ),
    # USB
    ("_usb_redirect_needs_spice", {"usb_redirect": 2}, "usb_redirect: needs graphics type spice"),
    (
        "_usb_redirect_needs_spice",
        {"usb_redirect": 2, "graphics": {"type": "vnc"}},
        "usb_redirect: needs graphics type spice",
    ),
    (
        "_usb_needs_controller",
        {"usb_devices": [{"vendor": "046d", "product": "c52b"}], "controllers": {"usb": "none"}},
        "usb_devices: needs a USB controller",
    ),
    (
        "_usb_needs_controller",
        {"graphics": SPICE, "usb_redirect": 1, "controllers": {"usb": "none"}},
        "usb_redirect: needs a USB controller",
    ),
    (
        "_usb_needs_controller",
        {"nics": [{"source": "br0", "model": "usb-net"}], "controllers": {"usb": "none"}},
        "nics[0].model: usb-net needs a USB controller",
    ),
    (
        "_usb_version_needs_layout",
        {"usb_devices": [{"vendor": "046d", "product": "c52b", "usb_version": 2}]},
        "usb_devices[0].usb_version: needs controllers.usb uhci-ehci-xhci",
    ),
    (
        "_usb_bus_and_device",
        {"usb_devices": [{"vendor": "046d", "product": "c52b", "bus": 1}]},
        "bus: bus and device go together",
    ),
    (
        "_unique_hostdevs",
        {"pci_devices": [{"address": "0000:03:00.0"}, {"address": "03:00.0"}]},
        "pci_devices[1].address: 0000:03:00.0 is also pci_devices[0]",
    ),
    (
        "_unique_hostdevs",
        {"usb_devices": [{"vendor": "046d", "product": "c52b"}] * 2},
        "usb_devices[1]: same device as usb_devices[0]",
    ),
    # other devices
    (
        "_balloon_stats_need_virtio",
        {"balloon": {"model": "none", "stats_period_s": 5}},
        "stats_period_s: needs model virtio",
    ),
    (
        "_rng_period_needs_rate",
        {"rng": {"rate_period_ms": 100}},
        "rate_period_ms: needs rate_bytes",
    ),
]


def _ids() -> list[str]:
    return [f"{rule}-{i}" for i, (rule, _, _) in enumerate(CASES)]


@pytest.mark.parametrize(("rule", "patch", "expected"), CASES, ids=_ids())
def test_rule_rejects_with_the_field_named(rule: str, patch: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as exc:
        VmSpec.model_validate({**BASE, **patch})
    assert expected in str(exc.value)


def test_every_registered_rule_has_a_case() -> None:
    registered = {fn.__name__ for rules in RULES.values() for fn in rules}
    covered = {rule for rule, _, _ in CASES}
    assert registered - covered == set()
    assert covered - registered == set()


def test_every_rule_says_what_it_checks() -> None:
    for rules in RULES.values():
        for fn in rules:
            assert fn.__doc__, f"{fn.__name__} needs a docstring (docs/spec.md lists it)"


def test_errors_carry_the_location_of_nested_fields() -> None:
    with pytest.raises(ValidationError) as exc:
        VmSpec.model_validate({**BASE, "disks": [FILE, {**FILE, "wwn": "5000c50015ea71ac"}]})
    (err,) = exc.value.errors()
    assert err["loc"] == ("disks", 1)
    assert "wwn" in err["msg"]
