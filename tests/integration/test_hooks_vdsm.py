"""VDSM's own hook scripts, installed where their Makefile.am puts them, run unmodified.

Each of the 16 VM- and device-level hooks of VDSM's vdsm_hooks/ that work under VDSM's own
library on a host like this one runs here through the operation that runs its chain (or, for
localdisk, whose LVM volumes this host has not, through the dry run, which runs the real chain),
and does its job. The other 11 are in docs/hooks.md with the reason.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from click.testing import CliRunner
from lxml import etree

from tests.hosts import where
from tests.support import QEMU_URI, small_vm, unique
from tests.vdsmhooks import all_hooks, install
from worker.cli import main

# need a facility this host does not have, so a site without it does not install them:
# libguestfs (fileinject), vhostmd (vhostmd), nmstate and VDSM's daemon (openstacknet)
NEEDS_FACILITY = {"fileinject", "vhostmd", "openstacknet"}


def run_op(env, tap, op, vm, custom=None, timeout=60.0):  # type: ignore[no-untyped-def]
    rid = env.publish(op, vm, custom=custom)
    return tap.wait_terminal(rid, timeout)["data"]


def hook_result(d: dict[str, Any], point: str, name: str) -> dict[str, Any]:
    (h,) = [h for h in d["hooks"] if h["point"] == point and h["name"] == name]
    return h


def live(uri: str, vm_uuid: str) -> etree._Element:
    conn = libvirt.open(uri)
    try:
        return etree.fromstring(conn.lookupByUUIDString(vm_uuid).XMLDesc(0))
    finally:
        conn.close()


def started(env, tap, start_worker, domains, hooks_root, hook, vm, custom, uri="test:///default"):  # type: ignore[no-untyped-def]
    """Install `hook` as VDSM does, start `vm` with `custom`: (the after event's data, the
    running domain's XML)."""
    install(hooks_root, hook)
    env.libvirt_uri = uri
    start_worker()
    domains.append(vm["uuid"])
    d = run_op(env, tap, "start_vm", vm, custom)
    assert d["phase"] == "after", d.get("error")
    return d, live(uri, vm["uuid"])


def test_a_whole_vdsm_hook_tree_lets_every_start_vm_run(
    env, tap, start_worker, test_domains, hooks_root
):
    hooks = [h for h in all_hooks() if h not in NEEDS_FACILITY]
    install(hooks_root, *hooks)
    start_worker()
    vm = small_vm("vdsm", cpu={"mode": "custom", "model": "qemu64"})
    test_domains.append(vm["uuid"])
    d = run_op(env, tap, "start_vm", vm)
    assert d["phase"] == "after", d.get("error")
    before = [h for h in d["hooks"] if h["point"] == "before_vm_start"]
    assert [h["name"] for h in before] == [
        "10_faqemu",
        "50_boot_hostdev",
        "50_cpuflags",
        "50_diskunmap",
        "50_httpsisoboot",
        "50_log_console",
        "50_log_firmware",
        "50_macbind",
        "50_nestedvt",
        "50_qemucmdline",
        "50_scratchpad",
        "50_smbios",
        "50_spiceoptions",
        "60_checkimages",
    ]
    assert all(h["rc"] == 0 for h in before), [(h["name"], h["stderr_tail"]) for h in before]


def test_boot_hostdev_boots_from_the_named_host_device(
    env, tap, start_worker, test_domains, hooks_root
):
    vm = small_vm("vdsm", pci_devices=[{"address": "0000:0b:00.0"}])
    d, xml = started(
        env,
        tap,
        start_worker,
        test_domains,
        hooks_root,
        "boot_hostdev",
        vm,
        {"boot_hostdev": "pci_0000_0b_00_0"},
    )
    assert hook_result(d, "before_vm_start", "50_boot_hostdev")["changed_xml"] is True
    assert xml.xpath("devices/hostdev/boot/@order") == ["1"]


def test_checkimages_checks_qcow2_disks_and_refuses_a_corrupt_one(
    env, tap, start_worker, test_domains, hooks_root, tmp_path
):
    good, bad = tmp_path / "good.qcow2", tmp_path / "bad.qcow2"
    for image in (good, bad):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    with open(bad, "r+b") as f:  # a refcount table pointing past the end of the file
        f.seek(48)
        f.write((1 << 40).to_bytes(8, "big"))
    custom = {"checkimages": "true"}
    vm = small_vm("vdsm", disks=[{"path": str(good), "format": "qcow2"}])
    d, _ = started(env, tap, start_worker, test_domains, hooks_root, "checkimages", vm, custom)
    h = hook_result(d, "before_vm_start", "60_checkimages")
    assert h["rc"] == 0 and f"{good} image check returned" in h["stderr_tail"]
    vm = small_vm("vdsm", disks=[{"path": str(bad), "format": "qcow2"}])
    test_domains.append(vm["uuid"])
    d = run_op(env, tap, "start_vm", vm, custom)
    assert d["phase"] == "fail" and d["error"]["hook"] == "60_checkimages"
    assert "Error running /usr/bin/qemu-img check" in d["error"]["stderr"]


def test_cpuflags_requires_and_disables_cpu_features(
    env, tap, start_worker, test_domains, hooks_root
):
    vm = small_vm("vdsm", cpu={"mode": "custom", "model": "qemu64"})
    _, xml = started(
        env,
        tap,
        start_worker,
        test_domains,
        hooks_root,
        "cpuflags",
        vm,
        {"cpuflags": "+mmx,-syscall"},
    )
    features = {f.get("name"): f.get("policy") for f in xml.iterfind("cpu/feature")}
    assert features == {"mmx": "require", "syscall": "disable"}


def test_diskunmap_passes_discard_to_scsi_disks(
    env, tap, start_worker, test_domains, hooks_root, tmp_path
):
    image = tmp_path / "d.raw"
    image.write_bytes(b"\0" * 4096)
    vm = small_vm("vdsm", disks=[{"path": str(image), "format": "raw", "bus": "virtio-scsi"}])
    _, xml = started(
        env, tap, start_worker, test_domains, hooks_root, "diskunmap", vm, {"diskunmap": "on"}
    )
    assert xml.xpath("devices/disk/driver/@discard") == ["unmap"]


@pytest.fixture
def vdsm_conf_dropin() -> Iterator[Path]:
    """A drop-in of VDSM's admin temporary configuration (/run/vdsm/vdsm.conf.d), removed after."""
    made = [p for p in (Path("/run/vdsm"), Path("/run/vdsm/vdsm.conf.d")) if not p.exists()]
    for p in made:
        p.mkdir(mode=0o755)
    path = Path("/run/vdsm/vdsm.conf.d") / f"99-{unique('vmworker-test')}.conf"
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        for p in reversed(made):
            shutil.rmtree(p, ignore_errors=True)


def test_faqemu_turns_a_kvm_domain_into_qemu_when_vdsm_conf_says_fake_kvm(
    env, tap, start_worker, test_domains, hooks_root, vdsm_conf_dropin
):
    vdsm_conf_dropin.write_text("[vars]\nfake_kvm_support = true\n")
    vm = small_vm("vdsm", domain_type="kvm", cpu={"mode": "custom", "model": "qemu64"})
    d, xml = started(env, tap, start_worker, test_domains, hooks_root, "faqemu", vm, None)
    assert hook_result(d, "before_vm_start", "10_faqemu")["changed_xml"] is True
    assert xml.get("type") == "qemu"
    assert xml.find("cpu/model") is None


def test_log_console_logs_the_serial_console_to_a_file(
    env, tap, start_worker, test_domains, hooks_root
):
    vm = small_vm("vdsm")
    _, xml = started(
        env, tap, start_worker, test_domains, hooks_root, "log_console", vm, {"log_console": "on"}
    )
    (log,) = xml.iterfind("devices/serial/log")
    assert log.get("file") == f"/var/log/libvirt/qemu/{vm['name']}-console.log"


def test_log_firmware_writes_the_firmware_log_of_a_real_qemu(
    env, tap, start_worker, qemu_domains, hooks_root, tmp_path
):
    vm = small_vm("fw")
    custom = {"log_firmware": "on", "log_firmware_dir": str(tmp_path)}
    _, xml = started(
        env, tap, start_worker, qemu_domains, hooks_root, "log_firmware", vm, custom, QEMU_URI
    )
    q = "{http://libvirt.org/schemas/domain/qemu/1.0}"
    args = [a.get("value") for a in xml.iter(f"{q}arg")]
    assert "isa-debugcon,iobase=0x402,chardev=firmware" in args
    assert (tmp_path / f"{vm['name']}-firmware.log").exists()  # QEMU opened it


def test_nestedvt_requires_the_hosts_nested_feature_when_the_host_has_it(
    env, tap, start_worker, test_domains, hooks_root
):
    vm = small_vm("vdsm", cpu={"mode": "custom", "model": "qemu64"})
    d, xml = started(env, tap, start_worker, test_domains, hooks_root, "nestedvt", vm, None)
    nested = {
        m: f
        for m, f in (("kvm_intel", "vmx"), ("kvm_amd", "svm"))
        if Path(f"/sys/module/{m}/parameters/nested").is_file()
        and Path(f"/sys/module/{m}/parameters/nested").read_text().strip() in ("Y", "1")
    }
    h = hook_result(d, "before_vm_start", "50_nestedvt")
    assert h["rc"] == 0
    required = [f.get("name") for f in xml.iterfind("cpu/feature[@policy='require']")]
    assert required == list(nested.values())[:1]
    assert h["changed_xml"] is bool(nested)


def test_qemucmdline_passes_arguments_to_a_real_qemu(
    env, tap, start_worker, qemu_domains, hooks_root
):
    vm = small_vm("cmdline")
    custom = {"qemu_cmdline": '["-msg", "timestamp=on"]'}
    _, xml = started(
        env, tap, start_worker, qemu_domains, hooks_root, "qemucmdline", vm, custom, QEMU_URI
    )
    q = "{http://libvirt.org/schemas/domain/qemu/1.0}"
    assert [a.get("value") for a in xml.iter(f"{q}arg")] == ["-msg", "timestamp=on"]
    pid = Path(f"/run/libvirt/qemu/{vm['name']}.pid").read_text().strip()
    assert "timestamp=on" in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_scratchpad_adds_a_scratch_disk_and_removes_it_after_destroy(
    env, tap, start_worker, test_domains, hooks_root, tmp_path
):
    image = tmp_path / "scratch.img"
    custom = {"scratchpad": f"1M,{image}"}
    vm = small_vm("vdsm")
    _, xml = started(env, tap, start_worker, test_domains, hooks_root, "scratchpad", vm, custom)
    assert xml.xpath("devices/disk/source/@file") == [str(image)]
    assert image.stat().st_size == 1024 * 1024  # made by qemu-img through hooking.execCmd
    d = run_op(env, tap, "destroy_vm", {"uuid": vm["uuid"]}, custom)
    assert d["phase"] == "after", d.get("error")
    assert hook_result(d, "after_vm_destroy", "50_scratchpad")["rc"] == 0
    assert not image.exists()


def test_smbios_sets_system_and_bios_entries(env, tap, start_worker, test_domains, hooks_root):
    vm = small_vm("vdsm")
    custom = {"smbios": "{'serial': '1234'}^{'vendor': 'oVirt'}"}
    _, xml = started(env, tap, start_worker, test_domains, hooks_root, "smbios", vm, custom)
    assert xml.xpath("sysinfo[@type='smbios']/system/entry[@name='serial']/text()") == ["1234"]
    assert xml.xpath("sysinfo[@type='smbios']/bios/entry[@name='vendor']/text()") == ["oVirt"]


@pytest.fixture
def libvirt_network() -> Iterator[tuple[str, str]]:
    """A running libvirt network on qemu:///system over a fresh Linux bridge: (network, bridge)."""
    tag = uuid.uuid4().hex[:8]
    net, bridge = f"vmwn{tag}", f"vmwb{tag}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    conn = libvirt.open(QEMU_URI)
    try:
        conn.networkCreateXML(
            f"<network><name>{net}</name><forward mode='bridge'/><bridge name='{bridge}'/>"
            "</network>"
        )
        yield net, bridge
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.networkLookupByName(net).destroy()
        conn.close()
        subprocess.run(["ip", "link", "del", bridge], check=False)


def test_extnet_moves_a_hotplugged_nic_to_a_libvirt_network(
    env, tap, start_worker, qemu_domains, hooks_root, libvirt_network
):
    net, bridge = libvirt_network
    vm = small_vm("extnet")
    started(env, tap, start_worker, qemu_domains, hooks_root, "extnet", vm, None, QEMU_URI)
    rid = env.publish(
        "attach_nic",
        {"uuid": vm["uuid"]},
        params={"nic": {"source": "no-such-bridge", "mac": "52:54:00:12:34:56"}},
        custom={"extnet": net},
    )
    d = tap.wait_terminal(rid, 60)["data"]
    assert d["phase"] == "after", d.get("error")
    assert hook_result(d, "before_nic_hotplug", "50_extnet")["changed_xml"] is True
    (nic,) = live(QEMU_URI, vm["uuid"]).iterfind("devices/interface")
    # live, libvirt shows the network's actual connection (a bridge) with the network named
    assert nic.find("source").get("network") == net
    tap_dev = nic.find("target").get("dev")
    assert Path(f"/sys/class/net/{tap_dev}/master").resolve().name == bridge


def dry_run(hooks_root: Path, tmp_path: Path, point: str, xml: str, *custom: str) -> Any:
    """`vmworker hooks run` (the real chain, on a copy): (its result, the final payload)."""
    src, out = tmp_path / "in.xml", tmp_path / "out.xml"
    src.write_text(xml)
    argv = ["hooks", "run", point, "--xml", str(src), "--hooks", str(hooks_root), "-o", str(out)]
    for pair in custom:
        argv += ["--custom", pair]
    res = CliRunner().invoke(main, argv)
    return res, etree.fromstring(out.read_text()) if out.exists() else None


NIC = (
    '<interface type="bridge"><mac address="00:1a:4a:16:01:b0"/><model type="virtio"/>'
    '<source bridge="ovirtmgmt"/><link state="up"/></interface>'
)


def defined_nic(env, tap, start_worker, test_domains, hooks_root, hook, nic_custom):  # type: ignore[no-untyped-def]
    """Install `hook` as VDSM does, define a VM whose one NIC has `nic_custom`: (the after
    event's data, the defined domain's NIC)."""
    install(hooks_root, hook)
    start_worker()
    vm = small_vm(
        "vdsm",
        disks=[{"path": "/var/lib/vmw-test/root.raw", "format": "raw"}],
        nics=[{"source": "ovirtmgmt", "custom": nic_custom}],
    )
    test_domains.append(vm["uuid"])
    d = run_op(env, tap, "define_vm", vm)
    assert d["phase"] == "after", d.get("error")
    (nic,) = live("test:///default", vm["uuid"]).iterfind("devices/interface")
    return d, nic


# before_device_create runs once per device with custom properties of a VM defined or started,
# with them in its environment (a vNIC profile's, in oVirt)
def test_allocate_net_picks_one_of_the_equivalent_networks(
    env, tap, start_worker, test_domains, hooks_root
):
    d, nic = defined_nic(
        env, tap, start_worker, test_domains, hooks_root, "allocate_net", {"equivnets": "red blue"}
    )
    assert nic.find("source").get("bridge") in ("red", "blue")
    ran = [h for h in d["hooks"] if h["name"] == "10_allocate_net"]
    # only the NIC has custom properties: the hook, which reads its own without checking it is
    # there, never sees the disk (as under VDSM)
    assert [h["device"].split(":")[0] for h in ran] == ["interface"]
    assert "allocating random network" in ran[0]["stderr_tail"] and ran[0]["changed_xml"]


def test_extnet_moves_a_created_nic_to_a_libvirt_network(
    env, tap, start_worker, test_domains, hooks_root
):
    _, nic = defined_nic(
        env, tap, start_worker, test_domains, hooks_root, "extnet", {"extnet": "default"}
    )
    assert nic.get("type") == "network" and nic.find("source").get("network") == "default"


@pytest.mark.qemu
@pytest.mark.migration
def test_scratchpad_refuses_to_migrate_a_vm_with_a_scratch_disk_and_lets_others_go(
    env, tap, two_hosts, tmp_path
):
    h = two_hosts
    install(h.hooks[h.a], "scratchpad")
    h.start_both()
    # the scratch disk where QEMU may open it; the VM's own custom properties go with each op
    image = Path("/var/lib/libvirt/images") / f"vmw-test-scratch-{uuid.uuid4().hex[:10]}.img"
    custom = {"scratchpad": f"1M,{image}"}
    try:
        scratch, plain = small_vm("scratch"), small_vm("plain")
        for vm, with_custom in ((scratch, custom), (plain, None)):
            h.domains[0].append(vm["uuid"])
            h.domains[1].append(vm["uuid"])
            d = run_op(env, tap, "start_vm", vm, with_custom)
            assert d["phase"] == "after", d.get("error")
        assert live(QEMU_URI, scratch["uuid"]).xpath("devices/disk/source/@file") == [str(image)]
        params = {"destination": h.b}
        rid = env.publish("migrate_vm", {"uuid": scratch["uuid"]}, params=params, custom=custom)
        d = tap.wait_terminal(rid, 120)["data"]
        assert d["phase"] == "fail" and d["error"]["code"] == "hook_failed"
        assert d["error"]["hook"] == "50_scratchpad"
        assert "cannot migrate VM with scratchpad devices" in d["error"]["stderr"]
        assert hook_result(d, "before_vm_migrate_source", "50_scratchpad")["rc"] == 2
        # refused before the destination was asked anything: the VM runs on, here only
        assert not [e for e in tap.events if e["_routing_key"].startswith(f"{h.b}.prepare_")]
        assert live(QEMU_URI, scratch["uuid"]).xpath("devices/disk/source/@file") == [str(image)]
        assert where(h, scratch["uuid"]) == {h.a: "running", h.b: "undefined"}
        rid = env.publish("migrate_vm", {"uuid": plain["uuid"]}, params=params)
        d = tap.wait_terminal(rid, 120)["data"]
        assert d["phase"] == "after", d.get("error")
        assert hook_result(d, "before_vm_migrate_source", "50_scratchpad")["rc"] == 0
        assert where(h, plain["uuid"]) == {h.a: "undefined", h.b: "running"}
    finally:
        image.unlink(missing_ok=True)


# localdisk's LVM volumes are not on this host: the dry run runs the source host's chain
def test_localdisk_refuses_to_migrate_a_vm_with_a_local_disk(hooks_root, tmp_path):
    install(hooks_root, "localdisk")
    xml = f"<domain type='kvm'><name>v</name><uuid>{uuid.uuid4()}</uuid><devices/></domain>"
    res, _ = dry_run(hooks_root, tmp_path, "before_vm_migrate_source", xml, "localdisk=lvm")
    assert res.exit_code == 1 and "localdisk: rc=2" in res.output
    assert "Cannot migrate VM with local disk" in res.output
    res, _ = dry_run(hooks_root, tmp_path, "before_vm_migrate_source", xml)
    assert res.exit_code == 0, res.output


def test_a_hook_needing_vdsms_daemon_fails_naming_vdsm_client_in_the_event(
    env, tap, start_worker, test_domains, hooks_root
):
    install(hooks_root, "vhostmd")
    for link in hooks_root.glob("before_*/50_vhostmd"):
        link.unlink()  # this host has no vhostmd.conf; the after_vm_destroy part is the point
    start_worker()
    vm = small_vm("vdsm")
    test_domains.append(vm["uuid"])
    assert run_op(env, tap, "start_vm", vm)["phase"] == "after"
    d = run_op(env, tap, "destroy_vm", {"uuid": vm["uuid"]}, {"sap_agent": "true"})
    assert d["phase"] == "after"  # after-chains only report
    h = hook_result(d, "after_vm_destroy", "50_vhostmd")
    assert h["rc"] == 1 and "vdsm.client needs VDSM's own daemon" in h["stderr_tail"]


@pytest.mark.parametrize("prewarm", [False, True])
def test_usr_bin_python3_hooks_run_on_the_hosts_python_with_libvirt_and_lxml(
    hooks_root, tmp_path, prewarm
):
    d = hooks_root / "before_vm_start"
    d.mkdir(mode=0o755)
    script = d / "50_host_python"
    script.write_text(
        "#!/usr/bin/python3\n"
        "import sys, libvirt, lxml.etree, hooking\n"
        "from vdsm.common import libvirtconnection\n"
        "hooking.log(f'python={sys.executable} uri={libvirtconnection.get().getURI()}')\n"
    )
    script.chmod(0o755)
    xml = f"<domain type='kvm'><name>v</name><uuid>{uuid.uuid4()}</uuid><devices/></domain>"
    src = tmp_path / "in.xml"
    src.write_text(xml)
    argv = ["hooks", "run", "before_vm_start", "--xml", str(src), "--hooks", str(hooks_root)]
    res = CliRunner().invoke(main, argv + (["--prewarm"] if prewarm else []))
    assert res.exit_code == 0, res.output
    assert "python=/usr/bin/python3 " in res.output
    assert "uri=qemu:///system" in res.output


@pytest.mark.parametrize(
    ("hook", "custom", "says"),
    [
        ("httpsisoboot", "httpsisoboot=https://example.com/x.iso", "has no attribute 'parse'"),
        ("macbind", "macbind={'00:1a:4a:60:d1:9a': 'lo'}", "has no attribute 'iteritems'"),
        ("spiceoptions", "spiceoptions={'image': {'compression': 'glz'}}", "iteritems"),
    ],
)
def test_hooks_broken_upstream_pass_without_their_property_and_fail_with_it(
    hooks_root, tmp_path, hook, custom, says
):
    install(hooks_root, hook)
    xml = (
        f"<domain type='kvm'><name>v</name><uuid>{uuid.uuid4()}</uuid><devices>"
        "<graphics type='spice'/></devices></domain>"
    )
    res, _ = dry_run(hooks_root, tmp_path, "before_vm_start", xml)
    assert res.exit_code == 0, res.output
    res, _ = dry_run(hooks_root, tmp_path, "before_vm_start", xml, custom)
    assert res.exit_code == 1 and "rc=2" in res.output and says in res.output


def hook_script(hooks_root: Path, point: str, name: str, body: str) -> None:
    d = hooks_root / point
    d.mkdir(mode=0o755, exist_ok=True)
    script = d / name
    script.write_text(
        "#!/usr/bin/python3\nimport os\nimport hooking\nvm = os.environ['vmId']\n" + body
    )
    script.chmod(0o755)


def domain_state(uri: str, vm_uuid: str) -> int:
    conn = libvirt.open(uri)
    try:
        return int(conn.lookupByUUIDString(vm_uuid).state()[0])
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("uri", "domains"), [("test:///default", "test_domains"), (QEMU_URI, "qemu_domains")]
)
def test_a_before_vm_start_hook_that_sets_start_paused_starts_the_vm_paused(
    env, tap, start_worker, hooks_root, request, uri, domains
):
    # VDSM's read-modify-write: the file holds the flags the worker would use (0) first
    hook_script(
        hooks_root,
        "before_vm_start",
        "50_start_paused",
        "flags = hooking.load_vm_launch_flags_from_file(vm)\n"
        "hooking.log(f'before: {flags}')\n"
        "hooking.dump_vm_launch_flags_to_file(vm, flags | 1)  # VIR_DOMAIN_START_PAUSED\n",
    )
    # an after_vm_start hook still sees them (VDSM's openstacknet reads them there)
    hook_script(
        hooks_root,
        "after_vm_start",
        "50_flags",
        "hooking.log(f'after: {hooking.load_vm_launch_flags_from_file(vm)}')\n",
    )
    env.libvirt_uri = uri
    start_worker()
    vm = small_vm("lf") if uri == QEMU_URI else small_vm("vdsm")
    request.getfixturevalue(domains).append(vm["uuid"])
    d = run_op(env, tap, "start_vm", vm)
    assert (d["phase"], d["state"], d["noop"]) == ("after", "paused", False), d.get("error")
    assert domain_state(uri, vm["uuid"]) == libvirt.VIR_DOMAIN_PAUSED
    assert "before: 0" in hook_result(d, "before_vm_start", "50_start_paused")["stderr_tail"]
    assert "after: 1" in hook_result(d, "after_vm_start", "50_flags")["stderr_tail"]
    # removed once the start's chains have run, as VDSM does
    assert not (env.state_dir / "hooks" / vm["uuid"] / "launchflags").exists()


def test_a_hook_that_clears_start_paused_starts_a_paused_start_running(
    env, tap, start_worker, test_domains, hooks_root
):
    hook_script(
        hooks_root,
        "before_vm_start",
        "50_never_paused",
        "flags = hooking.load_vm_launch_flags_from_file(vm)\n"
        "hooking.log(f'before: {flags}')\n"
        "hooking.dump_vm_launch_flags_to_file(vm, flags & ~1)\n",
    )
    start_worker()
    vm = small_vm("vdsm")
    test_domains.append(vm["uuid"])
    rid = env.publish("start_vm", vm, params={"paused": True})
    d = tap.wait_terminal(rid, 60.0)["data"]
    assert (d["phase"], d["state"]) == ("after", "running"), d.get("error")
    assert "before: 1" in hook_result(d, "before_vm_start", "50_never_paused")["stderr_tail"]
    assert domain_state("test:///default", vm["uuid"]) == libvirt.VIR_DOMAIN_RUNNING


@pytest.mark.parametrize("flags", ["1 << 20", "-1", "'paused'"])
def test_launch_flags_createwithflags_does_not_take_fail_the_start_before_libvirt(
    env, tap, start_worker, test_domains, hooks_root, flags
):
    hook_script(
        hooks_root,
        "before_vm_start",
        "50_bad_flags",
        f"hooking.dump_vm_launch_flags_to_file(vm, {flags})\n",
    )
    start_worker()
    vm = small_vm("vdsm")
    test_domains.append(vm["uuid"])
    d = run_op(env, tap, "start_vm", vm)
    assert d["phase"] == "fail"
    err = d["error"]
    assert (err["source"], err["code"]) == ("validation", "bad_launch_flags"), err
    assert d["state"] == "undefined"  # libvirt never called: not even defined
    assert not (env.state_dir / "hooks" / vm["uuid"] / "launchflags").exists()
