"""The VM spec: the `vm` object of an operation message, validated (pydantic v2).

The smallest valid spec is `{"uuid": "...", "name": "web-1", "vcpus": 1, "memory_mib": 512}`.
Every model forbids unknown keys, so a typo fails loudly instead of being ignored. Checks that
involve one field live on the field; checks across fields are the functions registered with
`@rule(model)` in `RULES`, one per rule, each naming the field it rejects (docs/spec.md lists
them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from handlers.scalars import (
    DEVICE_CUSTOM_DOC,
    AbsPath,
    BootOrder,
    BusName,
    CacheMode,
    DeviceCustom,
    IfName,
    IpAddress,
    Mac,
    PciAddress,
    UsbId,
    Uuid,
    Word,
    XmlText,
    schema_keywords,
)
from handlers.storage import IDE_TARGETS, TARGET_PREFIX

Rule = Callable[[Any], None]

# model class name -> its cross-field rules, in the order they run (filled by `rule`)
RULES: dict[str, list[Rule]] = {}


def rule(model: str) -> Callable[[Rule], Rule]:
    """Register a check across fields of `model`; it raises ValueError("field: why")."""

    def register(fn: Rule) -> Rule:
        RULES.setdefault(model, []).append(fn)
        return fn

    return register


class RuleError(ValueError):
    """A check across fields failed: one a JSON Schema cannot say (listed as `x-rules`)."""


class _Model(BaseModel):
    # strict: JSON types as sent ("4" is not an integer), as the JSON Schema says
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for cls in type(self).__mro__:  # a narrowed model (StartSpec) keeps its base's rules
            for check in RULES.get(cls.__name__, ()):
                try:
                    check(self)
                except RuleError:
                    raise
                except ValueError as exc:
                    raise RuleError(str(exc)) from None
        return self


# ---------------------------------------------------------------------------------------------
# CPU and memory


class CpuFeatureSpec(_Model):
    """One CPU flag and what to do with it."""

    name: str = Field(pattern=r"^[a-z0-9_.-]{1,32}$", description="CPU flag, e.g. `vmx`, `pcid`.")
    policy: Literal["require", "disable", "force", "optional", "forbid"] = "require"


class TopologySpec(_Model):
    """Guest CPU topology; sockets x cores x threads must equal the maximum vCPU count."""

    sockets: int = Field(ge=1, le=512)
    cores: int = Field(ge=1, le=512)
    threads: int = Field(ge=1, le=8)

    @property
    def total(self) -> int:
        return self.sockets * self.cores * self.threads


# vCPU numbers of 3 digits at most (255 vCPUs): "0-99999999" must not become a huge list
CPUSET_PATTERN = r"^[0-9]{1,3}(-[0-9]{1,3})?(,[0-9]{1,3}(-[0-9]{1,3})?)*$"


def parse_cpuset(value: str) -> list[int]:
    """`0-3,6` -> [0, 1, 2, 3, 6]."""
    out: list[int] = []
    for part in value.split(","):
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if last < first:
            raise ValueError(f"range {part!r} runs backwards")
        out.extend(range(first, last + 1))
    return out


class NumaCellSpec(_Model):
    """A guest NUMA node: which vCPUs and how much memory."""

    cpus: str = Field(pattern=CPUSET_PATTERN, max_length=1024, description="vCPU list, e.g. `0-3`.")
    memory_mib: int = Field(
        ge=1, description="Memory of this node; the cells add up to `memory_mib`."
    )


@rule("NumaCellSpec")
def _cpus_ranges_ascend(x: NumaCellSpec) -> None:
    """`cpu.numa[].cpus` ranges run upwards (`2-5`, never `5-2`)."""
    try:
        parse_cpuset(x.cpus)
    except ValueError as exc:
        raise ValueError(f"cpus: {exc}") from None


@rule("CpuSpec")
def _custom_needs_model(cpu: CpuSpec) -> None:
    """`cpu.model` is required when `cpu.mode` is `custom`, and only then allowed."""
    if cpu.mode == "custom" and cpu.model is None:
        raise ValueError("model: required when mode is custom")
    if cpu.mode != "custom" and cpu.model is not None:
        raise ValueError(f"model: only allowed when mode is custom (mode is {cpu.mode})")


@rule("CpuSpec")
def _unique_cpu_features(cpu: CpuSpec) -> None:
    """`cpu.features` names each flag once."""
    seen: set[str] = set()
    for i, f in enumerate(cpu.features):
        if f.name in seen:
            raise ValueError(f"features[{i}].name: {f.name!r} listed twice")
        seen.add(f.name)


class CpuSpec(_Model):
    """What CPU the guest sees."""

    mode: Literal["host-model", "host-passthrough", "custom"] = Field(
        default="host-model",
        description="`host-model` (migratable copy of the host CPU), `host-passthrough` "
        "(the host CPU as is) or `custom` (a named `model`).",
    )
    model: Word | None = Field(default=None, description="CPU model name for `custom`.")
    fallback: Literal["allow", "forbid"] | None = Field(
        default=None, description="May libvirt fall back to a close model the host supports."
    )
    features: list[CpuFeatureSpec] = Field(default_factory=list)
    topology: TopologySpec | None = None
    numa: list[NumaCellSpec] = Field(
        default_factory=list,
        description="Guest NUMA cells; one covering everything is made when `max_memory_mib` "
        "is set and this is empty (memory hotplug needs NUMA).",
    )


class HugepagesSpec(_Model):
    """Back guest memory with huge pages (they must be reserved on the host)."""

    size_kib: Literal[2048, 1048576] | None = Field(
        default=None, description="Page size; unset uses the host's default huge page size."
    )


# ---------------------------------------------------------------------------------------------
# OS, features, clock


class OsSpec(_Model):
    """Machine type, firmware and boot order."""

    arch: Literal["x86_64", "i686"] = Field(default="x86_64", description="Guest architecture.")
    machine: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="QEMU machine type (`pc`, `q35`, `pc-q35-7.2`, ...); unset: libvirt's default.",
    )
    firmware: Literal["bios", "uefi"] = Field(default="bios", description="SeaBIOS or OVMF.")
    loader: AbsPath | None = Field(
        default=None,
        description="UEFI code image (pflash, read-only); unset with `uefi`: libvirt picks one.",
    )
    secure_boot: bool = Field(default=False, description="UEFI Secure Boot (needs a q35 machine).")
    nvram: AbsPath | None = Field(default=None, description="Per-VM UEFI variable store.")
    nvram_template: AbsPath | None = Field(
        default=None, description="Copied to `nvram` if missing."
    )
    boot: list[Literal["hd", "cdrom", "network", "fd"]] = Field(
        default_factory=list,
        description="Boot devices in order; or use `boot_order` on devices, not both.",
    )
    boot_menu: bool = Field(default=False, description="Show the firmware's boot menu.")
    boot_menu_timeout_ms: int | None = Field(
        default=None, ge=0, le=65535, description="How long the menu waits."
    )

    @property
    def is_q35(self) -> bool:
        return self.machine is not None and "q35" in self.machine


@rule("OsSpec")
def _uefi_only_fields(os_: OsSpec) -> None:
    """`os.loader`, `os.nvram`, `os.nvram_template` and `os.secure_boot` need `firmware: uefi`."""
    if os_.firmware == "uefi":
        return
    for name in ("loader", "nvram", "nvram_template", "secure_boot"):
        if getattr(os_, name):
            raise ValueError(f"{name}: only allowed with firmware uefi")


@rule("OsSpec")
def _secure_boot_needs_q35(os_: OsSpec) -> None:
    """`os.secure_boot` needs a q35 machine (Secure Boot firmware needs SMM, which pc lacks)."""
    if os_.secure_boot and not os_.is_q35:
        raise ValueError("secure_boot: needs a q35 machine type (set os.machine to q35)")


@rule("OsSpec")
def _boot_devices_unique(os_: OsSpec) -> None:
    """`os.boot` lists each device kind once."""
    if len(set(os_.boot)) != len(os_.boot):
        raise ValueError("boot: lists a device twice")


@rule("OsSpec")
def _menu_timeout_needs_menu(os_: OsSpec) -> None:
    """`os.boot_menu_timeout_ms` needs `os.boot_menu`."""
    if os_.boot_menu_timeout_ms is not None and not os_.boot_menu:
        raise ValueError("boot_menu_timeout_ms: needs boot_menu true")


class HypervSpec(_Model):
    """Hyper-V enlightenments for Windows guests; `{}` turns on the usual set."""

    relaxed: bool = True
    vapic: bool = True
    spinlocks: int | None = Field(default=8191, ge=4095, description="Spinlock retries; null: off.")
    vpindex: bool = True
    runtime: bool = True
    synic: bool = True
    stimer: bool = True
    reset: bool = True
    frequencies: bool = True
    tlbflush: bool = True
    ipi: bool = True
    vendor_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{1,12}$")


@rule("HypervSpec")
def _hyperv_dependencies(hv: HypervSpec) -> None:
    """Hyper-V `synic`, `tlbflush` and `ipi` need `vpindex`; `stimer` needs `synic`."""
    for name in ("synic", "tlbflush", "ipi"):
        if getattr(hv, name) and not hv.vpindex:
            raise ValueError(f"{name}: needs vpindex")
    if hv.stimer and not hv.synic:
        raise ValueError("stimer: needs synic")


class FeaturesSpec(_Model):
    """Platform features."""

    acpi: bool = Field(default=True, description="Needed for ACPI shutdown and for UEFI.")
    apic: bool = True
    pae: bool = Field(default=False, description="Implied on x86_64; for 32-bit guests.")
    kvm_hidden: bool = Field(default=False, description="Hide KVM from the guest (GPU drivers).")
    hyperv: HypervSpec | None = Field(
        default=None, description="Hyper-V enlightenments (Windows guests); `{}` for the usual set."
    )


class TimerSpec(_Model):
    """One guest timer."""

    name: Literal["rtc", "pit", "hpet", "kvmclock", "hypervclock", "tsc"]
    present: bool | None = None
    tickpolicy: Literal["delay", "catchup", "merge", "discard"] | None = None


# tick policies QEMU implements per timer (libvirt refuses the others at define time)
_TICKPOLICIES: dict[str, tuple[str, ...]] = {
    "rtc": ("delay", "catchup"),
    "pit": ("delay", "catchup", "discard"),
    "hpet": ("delay", "catchup", "merge", "discard"),
    "tsc": ("delay", "catchup", "merge", "discard"),
    "kvmclock": (),
    "hypervclock": (),
}


@rule("TimerSpec")
def _timer_tickpolicy(x: TimerSpec) -> None:
    """A timer's `tickpolicy` is one QEMU implements for it (rtc: delay/catchup; pit: not
    merge; none on kvmclock and hypervclock)."""
    allowed = _TICKPOLICIES[x.name]
    if x.tickpolicy is not None and x.tickpolicy not in allowed:
        if not allowed:
            raise ValueError(f"tickpolicy: not allowed on the {x.name} timer")
        raise ValueError(
            f"tickpolicy: {x.tickpolicy} is not supported on the {x.name} timer "
            f"(use {' or '.join(allowed)})"
        )


DEFAULT_TIMERS: tuple[TimerSpec, ...] = (
    TimerSpec(name="rtc", tickpolicy="catchup"),
    TimerSpec(name="pit", tickpolicy="delay"),
    TimerSpec(name="hpet", present=False),
)


class ClockSpec(_Model):
    """Guest clock: UTC (Linux) or local time (Windows) and its timers."""

    offset: Literal["utc", "localtime"] = Field(
        default="utc",
        description="What the guest's RTC holds: UTC (Linux) or local time (Windows).",
    )
    timers: list[TimerSpec] | None = Field(
        default=None, description="Unset: rtc catchup, pit delay, hpet off; `[]`: none."
    )


@rule("ClockSpec")
def _timers_unique(x: ClockSpec) -> None:
    """`clock.timers` names each timer once."""
    seen: set[str] = set()
    for i, t in enumerate(x.timers or ()):
        if t.name in seen:
            raise ValueError(f"timers[{i}].name: timer {t.name!r} listed twice")
        seen.add(t.name)


# ---------------------------------------------------------------------------------------------
# Disks


class HostSpec(_Model):
    """A storage server."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.:\[\]-]{1,253}$", description="Host name or IP.")
    port: int | None = Field(default=None, ge=1, le=65535)


class DiskAuthSpec(_Model):
    """Credentials for a network disk, held in a libvirt secret (`virsh secret-define`)."""

    username: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    secret_uuid: Uuid


class IscsiSpec(_Model):
    """An iSCSI LUN, opened by QEMU itself."""

    host: str = Field(
        pattern=r"^[A-Za-z0-9_.:\[\]-]{1,253}$", description="Portal host name or IP."
    )
    port: int = Field(default=3260, ge=1, le=65535)
    target: str = Field(
        pattern=r"^(iqn\.|eui\.|naa\.)[A-Za-z0-9_.:-]{1,220}$", description="Target IQN."
    )
    lun: int = Field(default=0, ge=0, le=16383)


class RbdSpec(_Model):
    """A Ceph RBD image."""

    pool: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    image: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,256}$")
    hosts: list[HostSpec] = Field(
        default_factory=list, description="Monitors; empty: from the host's ceph.conf."
    )


class IoTuneSpec(_Model):
    """Disk I/O limits (QoS). A total limit excludes its read/write pair."""

    total_bytes_sec: int | None = Field(default=None, ge=1)
    read_bytes_sec: int | None = Field(default=None, ge=1)
    write_bytes_sec: int | None = Field(default=None, ge=1)
    total_iops_sec: int | None = Field(default=None, ge=1)
    read_iops_sec: int | None = Field(default=None, ge=1)
    write_iops_sec: int | None = Field(default=None, ge=1)

    def limits(self) -> Iterator[tuple[str, int]]:
        for name, value in self:
            if value is not None:
                yield name, value


@rule("IoTuneSpec")
def _iotune_not_empty(t: IoTuneSpec) -> None:
    """`iotune` sets at least one limit."""
    if not any(True for _ in t.limits()):
        raise ValueError("iotune: set at least one limit")


@rule("IoTuneSpec")
def _iotune_total_excludes_pair(t: IoTuneSpec) -> None:
    """`iotune.total_X` and `iotune.read_X`/`write_X` are exclusive (QEMU refuses both)."""
    for kind in ("bytes_sec", "iops_sec"):
        total = getattr(t, f"total_{kind}")
        if total is not None and (
            getattr(t, f"read_{kind}") is not None or getattr(t, f"write_{kind}") is not None
        ):
            raise ValueError(f"total_{kind}: cannot be set with read_{kind} or write_{kind}")


class DiskSpec(_Model):
    """A disk: a host file, a block device, an iSCSI LUN or a Ceph RBD image."""

    type: Literal["file", "block", "iscsi", "rbd"] = Field(
        default="file", description="Where the data is; says which of path/iscsi/rbd is set."
    )
    path: AbsPath | None = Field(
        default=None, description="File or block device (`file`, `block`)."
    )
    iscsi: IscsiSpec | None = None
    rbd: RbdSpec | None = None
    auth: DiskAuthSpec | None = Field(default=None, description="CHAP (iSCSI) or cephx (RBD).")
    format: Literal["qcow2", "raw"] | None = Field(
        default=None, description="Unset: read from the file's header (qcow2 magic), else raw."
    )
    bus: BusName = Field(
        default="virtio", description="`virtio-scsi` puts the disk on a virtio-scsi controller."
    )
    target: str | None = Field(
        default=None,
        pattern=r"^(vd|sd|hd)[a-z]{1,3}$",
        description="Guest device name (`vdb`); unset: the next free one for the bus.",
    )
    cache: CacheMode | None = Field(
        default=None, description="Host page cache mode; unset: QEMU's default."
    )
    io: Literal["native", "threads", "io_uring"] | None = Field(
        default=None, description="AIO mode; native needs cache none or directsync."
    )
    discard: Literal["unmap", "ignore"] | None = Field(
        default=None, description="Pass the guest's TRIM/UNMAP to the image."
    )
    iotune: IoTuneSpec | None = Field(default=None, description="I/O limits (QoS).")
    shareable: bool = Field(default=False, description="Several guests may attach it (raw only).")
    readonly: bool = Field(default=False, description="Not on ide or sata.")
    serial: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.+ -]{1,20}$", description="Serial the guest sees."
    )
    wwn: str | None = Field(
        default=None,
        pattern=r"^(0x)?[0-9a-fA-F]{16}$",
        description="World Wide Name (virtio-scsi, ide).",
    )
    boot_order: BootOrder | None = Field(default=None, description="Per-device boot priority.")
    custom: DeviceCustom = Field(default_factory=dict, description=DEVICE_CUSTOM_DOC)


@rule("DiskSpec")
def _disk_source_matches_type(d: DiskSpec) -> None:
    """A disk sets exactly the source its `type` needs: `path`, `iscsi` or `rbd`."""
    wanted = {"file": "path", "block": "path", "iscsi": "iscsi", "rbd": "rbd"}[d.type]
    if getattr(d, wanted) is None:
        raise ValueError(f"{wanted}: required for a {d.type} disk")
    for other in ("path", "iscsi", "rbd"):
        if other != wanted and getattr(d, other) is not None:
            raise ValueError(f"{other}: not allowed on a {d.type} disk")


@rule("DiskSpec")
def _auth_only_on_network_disks(d: DiskSpec) -> None:
    """`auth` is for iSCSI and RBD disks only."""
    if d.auth is not None and d.type not in ("iscsi", "rbd"):
        raise ValueError(f"auth: only for iscsi and rbd disks, not {d.type}")


@rule("DiskSpec")
def _native_io_needs_direct_cache(d: DiskSpec) -> None:
    """`io: native` needs `cache` none or directsync (O_DIRECT)."""
    if d.io == "native" and d.cache not in ("none", "directsync"):
        raise ValueError("io: native needs cache none or directsync")


@rule("DiskSpec")
def _wwn_needs_scsi_or_ide(d: DiskSpec) -> None:
    """`wwn` is only for virtio-scsi and ide disks (QEMU has no WWN property elsewhere)."""
    if d.wwn is not None and d.bus not in ("virtio-scsi", "ide"):
        raise ValueError(f"wwn: only for virtio-scsi or ide disks, not {d.bus}")


@rule("DiskSpec")
def _no_readonly_ide_sata(d: DiskSpec) -> None:
    """`readonly` disks cannot be on ide or sata (QEMU refuses; use virtio or virtio-scsi)."""
    if d.readonly and d.bus in ("ide", "sata"):
        raise ValueError(f"readonly: not supported for {d.bus} disks; use virtio or virtio-scsi")


@rule("DiskSpec")
def _shareable_not_qcow2(d: DiskSpec) -> None:
    """`shareable` disks must be raw: qcow2 metadata cannot be written by two guests."""
    if d.shareable and d.format == "qcow2":
        raise ValueError("shareable: a shared disk must be raw, not qcow2")


@rule("DiskSpec")
def _target_matches_bus(d: DiskSpec) -> None:
    """`target` starts with the bus's prefix (vd virtio, sd virtio-scsi/sata, hd ide)."""
    if d.target is not None:
        check_target(d.target, d.bus)


def check_target(target: str, bus: str) -> None:
    prefix = TARGET_PREFIX[bus]
    if not target.startswith(prefix):
        raise ValueError(f"target: {target!r} does not fit bus {bus} (needs {prefix}*)")
    if bus == "ide" and target not in IDE_TARGETS:
        raise ValueError(f"target: {target!r} is not an IDE name (hda-hdd)")


class CdromSpec(_Model):
    """A CD-ROM drive, empty when `path` is not set."""

    path: AbsPath | None = Field(default=None, description="ISO image; unset: empty drive.")
    bus: Literal["sata", "ide", "virtio-scsi"] = Field(
        default="sata", description="ide only on non-q35 machines."
    )
    target: str | None = Field(
        default=None, pattern=r"^(sd|hd)[a-z]{1,3}$", description="Unset: next free name."
    )
    boot_order: BootOrder | None = None
    custom: DeviceCustom = Field(default_factory=dict, description=DEVICE_CUSTOM_DOC)


@rule("CdromSpec")
def _cdrom_target_matches_bus(x: CdromSpec) -> None:
    """A CD-ROM `target` starts with its bus's prefix (sd sata/virtio-scsi, hd ide)."""
    if x.target is not None:
        check_target(x.target, x.bus)


# ---------------------------------------------------------------------------------------------
# NICs


class RateSpec(_Model):
    """A traffic shaping rate (libvirt units)."""

    average_kbytes: int = Field(ge=1, le=2**32 - 1, description="Average rate, kilobytes/s.")
    peak_kbytes: int | None = Field(default=None, ge=1, le=2**32 - 1, description="Peak, kB/s.")
    burst_kbytes: int | None = Field(default=None, ge=1, le=2**24, description="Burst size, kB.")


@rule("RateSpec")
def _peak_not_below_average(x: RateSpec) -> None:
    """`peak_kbytes` is not below `average_kbytes`."""
    if x.peak_kbytes is not None and x.peak_kbytes < x.average_kbytes:
        raise ValueError("peak_kbytes: lower than average_kbytes")


class BandwidthSpec(_Model):
    """NIC QoS, as seen from the guest: `inbound` is what it receives."""

    inbound: RateSpec | None = Field(default=None, description="Traffic to the guest.")
    outbound: RateSpec | None = Field(default=None, description="Traffic from the guest.")


@rule("BandwidthSpec")
def _bandwidth_not_empty(x: BandwidthSpec) -> None:
    """`bandwidth` sets `inbound`, `outbound` or both."""
    if x.inbound is None and x.outbound is None:
        raise ValueError("bandwidth: set inbound, outbound or both")


class FilterrefSpec(_Model):
    """An nwfilter applied to the NIC, e.g. clean-traffic with the guest's IP."""

    name: str = Field(
        default="clean-traffic", pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="nwfilter name."
    )
    ip: list[IpAddress] = Field(default_factory=list, description="Allowed guest IPs.")
    parameters: dict[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")], XmlText] = (
        Field(default_factory=dict)
    )


@rule("FilterrefSpec")
def _filter_ip_in_ip(x: FilterrefSpec) -> None:
    """Filter IP addresses go in `filterref.ip`, not `filterref.parameters.IP`."""
    if "IP" in x.parameters:
        raise ValueError("parameters: put IP addresses in ip, not parameters.IP")


_RESERVED_TAP = ("vnet", "vif", "macvtap", "macvlan")


class NicSpec(_Model):
    """A network interface: on a bridge, a libvirt network, or direct (macvtap) on a host NIC."""

    type: Literal["bridge", "network", "direct"] = Field(
        default="bridge", description="Host bridge, libvirt network, or macvtap on a host NIC."
    )
    source: str = Field(
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Bridge name, libvirt network name or host interface (direct).",
    )
    mode: Literal["vepa", "bridge", "private", "passthrough"] | None = Field(
        default=None, description="macvtap mode, `direct` only (default bridge)."
    )
    model: Literal["virtio", "e1000", "e1000e", "rtl8139", "vmxnet3", "usb-net"] = Field(
        default="virtio", description="NIC model the guest sees."
    )
    mac: Mac | None = Field(
        default=None, description="Unset: derived from the VM uuid and NIC position (52:54:00:...)."
    )
    bandwidth: BandwidthSpec | None = Field(default=None, description="QoS (traffic shaping).")
    filterref: FilterrefSpec | None = Field(
        default=None, description="nwfilter, e.g. anti-spoofing."
    )
    mtu: int | None = Field(default=None, ge=68, le=65535, description="Not on direct NICs.")
    link_state: Literal["up", "down"] | None = Field(
        default=None, description="Start with the link down to cut the guest off."
    )
    target_dev: IfName | None = Field(default=None, description="Host-side tap name.")
    queues: int | None = Field(default=None, ge=1, le=256, description="virtio multiqueue.")
    boot_order: BootOrder | None = None
    custom: DeviceCustom = Field(default_factory=dict, description=DEVICE_CUSTOM_DOC)


@rule("NicSpec")
def _host_ifname(n: NicSpec) -> None:
    """`source` of a bridge or direct NIC is a host interface name (at most 15 characters)."""
    if n.type in ("bridge", "direct") and len(n.source) > 15:
        raise ValueError("source: a host interface name has at most 15 characters")


@rule("NicSpec")
def _mode_only_direct(n: NicSpec) -> None:
    """`mode` is only for `direct` NICs."""
    if n.mode is not None and n.type != "direct":
        raise ValueError(f"mode: only for direct NICs, not {n.type}")


@rule("NicSpec")
def _queues_need_virtio(n: NicSpec) -> None:
    """`queues` (multiqueue) needs `model: virtio`."""
    if n.queues is not None and n.model != "virtio":
        raise ValueError(f"queues: needs model virtio, not {n.model}")


@rule("NicSpec")
def _mtu_not_on_direct(n: NicSpec) -> None:
    """`mtu` cannot be set on `direct` (macvtap) NICs; they take the host interface's MTU."""
    if n.mtu is not None and n.type == "direct":
        raise ValueError("mtu: not supported on direct NICs (they use the host NIC's MTU)")


@rule("NicSpec")
def _target_dev_not_reserved(n: NicSpec) -> None:
    """`target_dev` may not use libvirt's own prefixes (vnet, vif, macvtap, macvlan)."""
    if n.target_dev is not None and n.target_dev.startswith(_RESERVED_TAP):
        raise ValueError(f"target_dev: {n.target_dev!r} uses a prefix libvirt reserves")


# ---------------------------------------------------------------------------------------------
# Display and other devices


class SpiceSpec(_Model):
    """SPICE tuning; the defaults are the ones seed 003 (ZStack) uses for its VDI desktops."""

    image_compression: Literal["auto_glz", "auto_lz", "quic", "glz", "lz", "off"] = "auto_glz"
    jpeg_compression: Literal["auto", "never", "always"] = "always"
    zlib_compression: Literal["auto", "never", "always"] = "never"
    playback_compression: bool = False
    streaming_mode: Literal["filter", "all", "off"] = "filter"
    mouse_mode: Literal["client", "server"] = "client"
    file_transfer: bool = False
    clipboard: bool = False


class GraphicsSpec(_Model):
    """A remote display."""

    type: Literal["vnc", "spice"] = "vnc"
    listen: IpAddress = Field(
        default="127.0.0.1", description="Address to listen on (IPv4 or IPv6)."
    )
    port: int | None = Field(default=None, ge=5900, le=65535, description="Unset: autoport.")
    password: str | None = Field(
        default=None,
        min_length=1,
        pattern=r"^[\x20-\x7e]+$",
        description="Printable ASCII; at most 8 characters for VNC.",
    )
    spice: SpiceSpec | None = Field(default=None, description="SPICE only; unset: defaults.")


@rule("GraphicsSpec")
def _vnc_password_length(g: GraphicsSpec) -> None:
    """A VNC `password` has at most 8 characters (the protocol ignores the rest)."""
    if g.type == "vnc" and g.password is not None and len(g.password) > 8:
        raise ValueError("password: VNC passwords have at most 8 characters")


@rule("GraphicsSpec")
def _spice_options_need_spice(g: GraphicsSpec) -> None:
    """`spice` options need `type: spice`."""
    if g.spice is not None and g.type != "spice":
        raise ValueError("spice: options only apply to type spice")


class VideoSpec(_Model):
    """The video card."""

    model: Literal["vga", "cirrus", "qxl", "virtio", "bochs", "none"] = "vga"
    vram_kib: int | None = Field(default=None, ge=1024, le=1048576, description="Video RAM.")
    heads: int = Field(default=1, ge=1, le=16, description="Outputs of one card (qxl, virtio).")
    monitors: int = Field(
        default=1, ge=1, le=4, description="qxl/virtio: one video device per monitor (VDI)."
    )


@rule("VideoSpec")
def _multihead_needs_qxl_or_virtio(x: VideoSpec) -> None:
    """`video.monitors` or `video.heads` above 1 needs `model` qxl or virtio (the others
    can be neither secondary devices nor multi-head)."""
    for name in ("monitors", "heads"):
        if getattr(x, name) > 1 and x.model not in ("qxl", "virtio"):
            raise ValueError(f"{name}: more than one needs model qxl or virtio, not {x.model}")


class ChannelSpec(_Model):
    """An extra virtio-serial channel backed by a unix socket on the host."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Port name the guest sees.")
    path: AbsPath | None = Field(default=None, description="Socket path; unset: libvirt's choice.")


class ControllersSpec(_Model):
    """Controllers that are not implied by a device."""

    usb: Literal["ich9", "uhci-ehci-xhci", "qemu-xhci", "none"] = Field(
        default="ich9",
        description="`ich9`: ich9-ehci1 with its three uhci companions (seed 003's USB "
        "redirection layout); `uhci-ehci-xhci`: one controller per USB version, indexes 0/1/2 "
        "(seed 003's default); `qemu-xhci`: one USB 3 controller; `none`.",
    )
    virtio_scsi: bool | None = Field(
        default=None, description="Unset: added when a disk or CD-ROM uses virtio-scsi."
    )
    virtio_scsi_queues: int | None = Field(
        default=None, ge=1, le=64, description="virtio-scsi multiqueue."
    )


class PciHostdevSpec(_Model):
    """A host PCI device passed through with VFIO."""

    address: PciAddress = Field(description="Host address `dddd:bb:ss.f` (domain optional).")
    managed: bool = Field(default=True, description="libvirt detaches it from the host driver.")
    rom_bar: bool | None = Field(default=None, description="Expose the device's option ROM.")
    boot_order: BootOrder | None = None
    custom: DeviceCustom = Field(default_factory=dict, description=DEVICE_CUSTOM_DOC)


class UsbHostdevSpec(_Model):
    """A host USB device passed through, by vendor/product and optionally bus/device."""

    vendor: UsbId
    product: UsbId
    bus: int | None = Field(default=None, ge=0, le=255, description="Host USB bus.")
    device: int | None = Field(default=None, ge=1, le=127, description="Host device number.")
    usb_version: Literal[1, 2, 3] | None = Field(
        default=None,
        description="Guest controller (`uhci-ehci-xhci` layout only): 1 uhci, 2 ehci, 3 xhci.",
    )
    boot_order: BootOrder | None = None
    custom: DeviceCustom = Field(default_factory=dict, description=DEVICE_CUSTOM_DOC)


@rule("UsbHostdevSpec")
def _usb_bus_and_device(x: UsbHostdevSpec) -> None:
    """A USB device's host `bus` and `device` are given together or not at all."""
    if (x.bus is None) != (x.device is None):
        raise ValueError("bus: bus and device go together")


class BalloonSpec(_Model):
    """The memory balloon."""

    model: Literal["virtio", "none"] = "virtio"
    stats_period_s: int | None = Field(
        default=None, ge=0, le=3600, description="Unset: 10 s with virtio; 0: no stats."
    )


@rule("BalloonSpec")
def _balloon_stats_need_virtio(x: BalloonSpec) -> None:
    """`balloon.stats_period_s` needs `model: virtio`."""
    if x.model == "none" and x.stats_period_s:
        raise ValueError("stats_period_s: needs model virtio")


class RngSpec(_Model):
    """A virtio RNG fed from a host random device."""

    source: Literal["/dev/urandom", "/dev/random", "/dev/hwrng"] = Field(
        default="/dev/urandom", description="Host entropy source."
    )
    rate_bytes: int | None = Field(default=None, ge=1, description="At most this many bytes ...")
    rate_period_ms: int | None = Field(default=None, ge=1, description="... per this period.")


@rule("RngSpec")
def _rng_period_needs_rate(x: RngSpec) -> None:
    """`rng.rate_period_ms` needs `rng.rate_bytes`."""
    if x.rate_period_ms is not None and x.rate_bytes is None:
        raise ValueError("rate_period_ms: needs rate_bytes")


class WatchdogSpec(_Model):
    """A watchdog device and what happens when the guest stops feeding it."""

    model: Literal["i6300esb", "ib700"] = "i6300esb"
    action: Literal["reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi"] = Field(
        default="reset", description="What libvirt does when the guest stops feeding it."
    )


class PanicSpec(_Model):
    """A panic notifier, so a guest kernel panic becomes an `on_crash` event."""

    model: Literal["isa", "hyperv"] = Field(
        default="isa", description="isa (pvpanic) or hyperv (Windows crash MSRs)."
    )


# ---------------------------------------------------------------------------------------------
# The VM


def _meta_key(value: str) -> str:
    if value[:3].lower() == "xml":
        raise ValueError("XML reserves names starting with 'xml'")
    return value


MetaKey = Annotated[
    str,
    Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"),
    AfterValidator(_meta_key),
    schema_keywords(pattern=r"^(?![Xx][Mm][Ll])[A-Za-z_][A-Za-z0-9_.-]{0,63}$"),
]
Lifecycle = Literal["destroy", "restart", "preserve", "rename-restart"]


class VmSpec(_Model):
    """A whole virtual machine; everything but `uuid` and `name` has a default."""

    uuid: Uuid = Field(description="The domain's UUID (any case, stored canonical).")
    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$",
        min_length=1,
        max_length=64,
        description="The domain's name, unique on the host.",
    )
    description: XmlText | None = Field(
        default=None, max_length=4096, description="Free text for people (`<description>`)."
    )
    metadata: dict[MetaKey, Annotated[XmlText, Field(max_length=4096)]] = Field(
        default_factory=dict,
        description="Worker-owned keys (control plane ids, ...), stored in the domain under "
        "`<vmworker:vm>`.",
    )
    domain_type: Literal["kvm", "qemu"] | None = Field(
        default=None, description="Unset: kvm where /dev/kvm exists, else qemu (TCG)."
    )
    emulator: AbsPath | None = Field(default=None, description="QEMU binary; unset: libvirt's.")

    vcpus: int = Field(default=1, ge=1, le=255, description="vCPUs at start.")
    max_vcpus: int | None = Field(
        default=None, ge=1, le=255, description="Hotplug ceiling (255: the pc machine limit)."
    )
    cpu: CpuSpec | None = Field(default=None, description="Unset: libvirt's default CPU model.")
    cpu_shares: int | None = Field(default=None, ge=2, le=262144, description="cgroup weight.")

    memory_mib: int = Field(
        default=512, ge=16, le=16 * 1024 * 1024, description="Memory at start, MiB."
    )
    max_memory_mib: int | None = Field(
        default=None, ge=16, le=16 * 1024 * 1024, description="Memory hotplug ceiling."
    )
    memory_slots: int = Field(default=16, ge=1, le=255, description="DIMM slots for hotplug.")
    hugepages: HugepagesSpec | None = Field(default=None, description="Unset: normal pages.")

    os: OsSpec = Field(default_factory=OsSpec)
    features: FeaturesSpec = Field(default_factory=FeaturesSpec)
    clock: ClockSpec = Field(default_factory=ClockSpec)
    on_poweroff: Lifecycle = Field(default="destroy", description="When the guest powers off.")
    on_reboot: Lifecycle = Field(default="restart", description="When the guest reboots.")
    on_crash: Lifecycle | Literal["coredump-destroy", "coredump-restart"] = Field(
        default="destroy", description="When the guest crashes (see `panic`)."
    )

    disks: list[DiskSpec] = Field(
        default_factory=list, max_length=256, description="Disks; targets are assigned in order."
    )
    cdroms: list[CdromSpec] = Field(default_factory=list, max_length=8)
    nics: list[NicSpec] = Field(default_factory=list, max_length=64)

    graphics: GraphicsSpec | None = Field(default=None, description="Unset: no display (headless).")
    video: VideoSpec | None = Field(
        default=None, description="Unset with graphics: vga for VNC, qxl for SPICE."
    )
    sound: Literal["ich6", "ich9", "ac97"] | None = Field(
        default=None, description="Sound card (seed 003 gives SPICE desktops ich6)."
    )
    serial_console: bool = Field(default=True, description="A pty serial port and console.")
    guest_agent: bool = Field(default=True, description="The org.qemu.guest_agent.0 channel.")
    channels: list[ChannelSpec] = Field(default_factory=list, max_length=16)
    controllers: ControllersSpec = Field(default_factory=ControllersSpec)
    usb_redirect: int = Field(default=0, ge=0, le=4, description="SPICE USB redirection slots.")
    pci_devices: list[PciHostdevSpec] = Field(default_factory=list, max_length=32)
    usb_devices: list[UsbHostdevSpec] = Field(default_factory=list, max_length=16)
    balloon: BalloonSpec = Field(default_factory=BalloonSpec)
    rng: RngSpec | None = Field(default=None, description="Unset: no RNG device.")
    watchdog: WatchdogSpec | None = Field(default=None, description="Unset: no watchdog.")
    panic: PanicSpec | None = Field(default=None, description="Unset: no panic notifier.")

    raw_xml: XmlText | None = Field(
        default=None,
        max_length=65536,
        description="A `<domain>` fragment merged into the result; refused unless the host "
        "allows raw XML.",
    )

    @property
    def max_vcpu_count(self) -> int:
        return self.max_vcpus or self.vcpus

    def device_customs(self) -> Iterator[tuple[str, dict[str, str]]]:
        """(where, custom) of each device that has custom properties (`nics.0.custom`, ...)."""
        for field in ("disks", "cdroms", "nics", "pci_devices", "usb_devices"):
            for i, dev in enumerate(getattr(self, field)):
                if dev.custom:
                    yield f"{field}.{i}.custom", dev.custom


@rule("VmSpec")
def _max_vcpus(vm: VmSpec) -> None:
    """`max_vcpus` is at least `vcpus`."""
    if vm.max_vcpus is not None and vm.max_vcpus < vm.vcpus:
        raise ValueError(f"max_vcpus: {vm.max_vcpus} is below vcpus {vm.vcpus}")


@rule("VmSpec")
def _topology_matches_vcpus(vm: VmSpec) -> None:
    """`cpu.topology` multiplies out to the maximum vCPU count (`max_vcpus` or `vcpus`)."""
    topo = vm.cpu.topology if vm.cpu else None
    if topo is not None and topo.total != vm.max_vcpu_count:
        raise ValueError(
            f"cpu.topology: {topo.sockets}x{topo.cores}x{topo.threads}={topo.total} "
            f"vCPUs, but the maximum vCPU count is {vm.max_vcpu_count}"
        )


@rule("VmSpec")
def _numa_cells_cover_vcpus(vm: VmSpec) -> None:
    """`cpu.numa` cells hold every vCPU exactly once, and no vCPU beyond the maximum."""
    cells = vm.cpu.numa if vm.cpu else []
    if not cells:
        return
    seen: set[int] = set()
    for i, cell in enumerate(cells):
        for c in parse_cpuset(cell.cpus):
            if c >= vm.max_vcpu_count:
                raise ValueError(
                    f"cpu.numa[{i}].cpus: vCPU {c} does not exist "
                    f"(maximum vCPU count is {vm.max_vcpu_count})"
                )
            if c in seen:
                raise ValueError(f"cpu.numa[{i}].cpus: vCPU {c} is in two cells")
            seen.add(c)
    missing = sorted(set(range(vm.max_vcpu_count)) - seen)
    if missing:
        raise ValueError(f"cpu.numa: vCPUs {missing} are in no cell")


@rule("VmSpec")
def _numa_memory_adds_up(vm: VmSpec) -> None:
    """`cpu.numa` cell memory adds up to `memory_mib`."""
    cells = vm.cpu.numa if vm.cpu else []
    total = sum(c.memory_mib for c in cells)
    if cells and total != vm.memory_mib:
        raise ValueError(f"cpu.numa: cells hold {total} MiB but memory_mib is {vm.memory_mib}")


@rule("VmSpec")
def _max_memory(vm: VmSpec) -> None:
    """`max_memory_mib` is at least `memory_mib`."""
    if vm.max_memory_mib is not None and vm.max_memory_mib < vm.memory_mib:
        raise ValueError(f"max_memory_mib: {vm.max_memory_mib} is below memory_mib {vm.memory_mib}")


@rule("VmSpec")
def _boot_order_one_way(vm: VmSpec) -> None:
    """Boot order is given either by `os.boot` or by devices' `boot_order`, never both."""
    if not vm.os.boot:
        return
    for field, _ in _boot_orders(vm):
        raise ValueError(f"{field}: not allowed together with os.boot (use one or the other)")


@rule("VmSpec")
def _boot_orders_unique(vm: VmSpec) -> None:
    """Devices' `boot_order` values are all different."""
    seen: dict[int, str] = {}
    for field, order in _boot_orders(vm):
        if order in seen:
            raise ValueError(f"{field}: boot order {order} is also used by {seen[order]}")
        seen[order] = field


def _boot_orders(vm: VmSpec) -> Iterator[tuple[str, int]]:
    groups: list[tuple[str, list[Any]]] = [
        ("disks", vm.disks),
        ("cdroms", vm.cdroms),
        ("nics", vm.nics),
        ("pci_devices", vm.pci_devices),
        ("usb_devices", vm.usb_devices),
    ]
    for name, items in groups:
        for i, item in enumerate(items):
            if item.boot_order is not None:
                yield f"{name}[{i}].boot_order", item.boot_order


@rule("VmSpec")
def _targets_unique(vm: VmSpec) -> None:
    """Disk and CD-ROM `target` names are all different."""
    seen: dict[str, str] = {}
    for where, item in _drives(vm):
        if item.target is None:
            continue
        if item.target in seen:
            raise ValueError(f"{where}.target: {item.target!r} is also used by {seen[item.target]}")
        seen[item.target] = f"{where}.target"


def _drives(vm: VmSpec) -> Iterator[tuple[str, DiskSpec | CdromSpec]]:
    yield from ((f"disks[{i}]", d) for i, d in enumerate(vm.disks))
    yield from ((f"cdroms[{i}]", c) for i, c in enumerate(vm.cdroms))


@rule("VmSpec")
def _ide_fits(vm: VmSpec) -> None:
    """At most 4 IDE devices (disks and CD-ROMs together): two buses, master and slave."""
    ide = [where for where, item in _drives(vm) if item.bus == "ide"]
    if len(ide) > len(IDE_TARGETS):
        raise ValueError(f"{ide[len(IDE_TARGETS)]}.bus: more than 4 IDE devices")


@rule("VmSpec")
def _no_ide_on_q35(vm: VmSpec) -> None:
    """q35 machines have no IDE controller: use sata (or virtio-scsi) there."""
    if not vm.os.is_q35:
        return
    for where, item in _drives(vm):
        if item.bus == "ide":
            raise ValueError(f"{where}.bus: ide is not available on a q35 machine; use sata")


@rule("VmSpec")
def _virtio_scsi_controller(vm: VmSpec) -> None:
    """A virtio-scsi disk or CD-ROM needs the virtio-scsi controller (`controllers.virtio_scsi`)."""
    if vm.controllers.virtio_scsi is not False:
        return
    for where, item in _drives(vm):
        if item.bus == "virtio-scsi":
            raise ValueError(f"{where}.bus: virtio-scsi, but controllers.virtio_scsi is false")


@rule("VmSpec")
def _scsi_queues_need_controller(vm: VmSpec) -> None:
    """`controllers.virtio_scsi_queues` needs the virtio-scsi controller."""
    c = vm.controllers
    if c.virtio_scsi_queues is not None and c.virtio_scsi is False:
        raise ValueError("controllers.virtio_scsi_queues: controllers.virtio_scsi is false")


@rule("VmSpec")
def _unique_macs(vm: VmSpec) -> None:
    """NIC `mac` addresses are all different."""
    seen: dict[str, int] = {}
    for i, n in enumerate(vm.nics):
        if n.mac is None:
            continue
        if n.mac in seen:
            raise ValueError(f"nics[{i}].mac: {n.mac} is also nics[{seen[n.mac]}].mac")
        seen[n.mac] = i


@rule("VmSpec")
def _usb_needs_controller(vm: VmSpec) -> None:
    """USB host devices, USB redirection and usb-net NICs need a USB controller
    (`controllers.usb` not none)."""
    if vm.controllers.usb != "none":
        return
    for i, n in enumerate(vm.nics):
        if n.model == "usb-net":
            raise ValueError(
                f"nics[{i}].model: usb-net needs a USB controller, but controllers.usb is none"
            )
    if vm.usb_devices:
        raise ValueError("usb_devices: needs a USB controller, but controllers.usb is none")
    if vm.usb_redirect:
        raise ValueError("usb_redirect: needs a USB controller, but controllers.usb is none")


@rule("VmSpec")
def _usb_version_needs_layout(vm: VmSpec) -> None:
    """`usb_devices[].usb_version` picks a controller of the `uhci-ehci-xhci` layout only."""
    if vm.controllers.usb == "uhci-ehci-xhci":
        return
    for i, u in enumerate(vm.usb_devices):
        if u.usb_version is not None:
            raise ValueError(
                f"usb_devices[{i}].usb_version: needs controllers.usb uhci-ehci-xhci, "
                f"not {vm.controllers.usb}"
            )


@rule("VmSpec")
def _usb_redirect_needs_spice(vm: VmSpec) -> None:
    """`usb_redirect` works over SPICE only (`graphics.type: spice`)."""
    if vm.usb_redirect and (vm.graphics is None or vm.graphics.type != "spice"):
        raise ValueError("usb_redirect: needs graphics type spice")


@rule("VmSpec")
def _unique_hostdevs(vm: VmSpec) -> None:
    """A host PCI address, or a USB vendor:product[@bus.device], is passed through once."""
    seen: dict[str, str] = {}
    for i, p in enumerate(vm.pci_devices):
        key = p.address
        if key in seen:
            raise ValueError(f"pci_devices[{i}].address: {key} is also {seen[key]}")
        seen[key] = f"pci_devices[{i}]"
    for i, u in enumerate(vm.usb_devices):
        key = f"{u.vendor}:{u.product}@{u.bus}.{u.device}"
        if key in seen:
            raise ValueError(f"usb_devices[{i}]: same device as {seen[key]}")
        seen[key] = f"usb_devices[{i}]"


GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"
SPICE_AGENT_CHANNEL = "com.redhat.spice.0"


@rule("VmSpec")
def _channel_names(vm: VmSpec) -> None:
    """`channels[].name` are unique and do not take the guest agent's or SPICE agent's name."""
    seen: set[str] = set()
    if vm.guest_agent:
        seen.add(GUEST_AGENT_CHANNEL)
    if vm.graphics is not None and vm.graphics.type == "spice":
        seen.add(SPICE_AGENT_CHANNEL)
    for i, ch in enumerate(vm.channels):
        if ch.name in seen:
            raise ValueError(f"channels[{i}].name: {ch.name!r} is already in use")
        seen.add(ch.name)


@rule("VmSpec")
def _uefi_needs_acpi(vm: VmSpec) -> None:
    """UEFI firmware needs `features.acpi` (x86 UEFI boots through ACPI tables)."""
    if vm.os.firmware == "uefi" and not vm.features.acpi:
        raise ValueError("features.acpi: UEFI firmware needs ACPI")


@rule("VmSpec")
def _hugepages_fit(vm: VmSpec) -> None:
    """With 1 GiB `hugepages`, `memory_mib` is a whole number of GiB."""
    if vm.hugepages is not None and vm.hugepages.size_kib == 1048576 and vm.memory_mib % 1024:
        raise ValueError(
            "hugepages.size_kib: memory_mib must be a multiple of 1024 for 1 GiB pages"
        )
