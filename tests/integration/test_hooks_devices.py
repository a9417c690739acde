"""Device hook chains and VDSM's host points through the real worker: RabbitMQ, libvirt's test
driver, scripts in a hooks root."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from tests.integration.test_hooks_worker import hook, sh
from tests.integration.test_qemu_devices import bridge  # noqa: F401 - a fixture
from tests.support import QEMU_URI, small_vm, wait_for

# sets the model of a NIC that has the `nic_model` custom property, as a site's VDSM hook would
SET_NIC_MODEL = """#!/usr/bin/env python3
import os, hooking
if 'nic_model' in os.environ:
    doc = hooking.read_domxml()
    iface = doc.getElementsByTagName('interface')[0]
    model = iface.getElementsByTagName('model')[0]
    model.setAttribute('type', os.environ['nic_model'])
    hooking.write_domxml(doc)
"""


def vm_spec() -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()),
        "name": f"vmw-dev-{uuid.uuid4().hex[:8]}",
        "vcpus": 1,
        "memory_mib": 64,
        "disks": [
            {"path": "/var/lib/vmw-test/root.raw", "format": "raw", "custom": {"tier": "gold"}},
            {"path": "/var/lib/vmw-test/data.raw", "format": "raw"},  # no custom: no chain
        ],
        "nics": [{"source": "br0", "custom": {"nic_model": "e1000"}}],
    }


def run(env: Any, tap: Any, op: str, vm: dict[str, Any], **kw: Any) -> dict[str, Any]:
    rid = env.publish(op, vm, **kw)
    return dict(tap.wait_terminal(rid)["data"])


def ran(d: dict[str, Any], point: str) -> list[str]:
    return [h["device"] for h in d["hooks"] if h["point"] == point]


def test_before_device_create_edits_a_nic_of_the_defined_domain_and_after_runs_per_device(
    env, tap, start_worker, test_domains, hooks_root, tmp_path
):
    log = tmp_path / "after.log"
    hook(hooks_root, "before_device_create", "50_nic_model", SET_NIC_MODEL)
    hook(hooks_root, "after_device_create", "50_log", sh(f'head -c 30 "$_hook_domxml" >> {log}'))
    start_worker()
    vm = vm_spec()
    test_domains.append(vm["uuid"])
    d = run(env, tap, "define_vm", vm)
    assert d["phase"] == "after", d.get("error")

    xml = libvirt.open("test:///default").lookupByUUIDString(vm["uuid"]).XMLDesc(0)
    assert etree.fromstring(xml).find("devices/interface/model").get("type") == "e1000"
    nic = next(h for h in d["hooks"] if h.get("device", "").startswith("interface:"))
    assert nic["point"] == "before_device_create" and nic["changed_xml"] is True
    assert ran(d, "before_device_create") == ["disk:vda", nic["device"]]
    assert ran(d, "after_device_create") == ["disk:vda", nic["device"]]
    assert log.read_text().count("<disk") == 1 and log.read_text().count("<interface") == 1


def test_a_failing_before_device_create_fails_the_start_before_libvirt(
    env, tap, start_worker, test_domains, hooks_root
):
    hook(hooks_root, "before_device_create", "10_no", sh("echo 'no such network' >&2; exit 1"))
    hook(hooks_root, "after_device_create_fail", "10_log", sh('echo "undo: $_hook_error" >&2'))
    start_worker()
    vm = vm_spec()
    test_domains.append(vm["uuid"])
    d = run(env, tap, "start_vm", vm)
    assert d["phase"] == "fail"
    assert d["error"]["source"] == "hook" and d["error"]["hook"] == "10_no"
    assert "disk:vda" in d["error"]["message"]
    assert ran(d, "before_device_create") == ["disk:vda"]  # stopped at the first device
    fails = [h for h in d["hooks"] if h["point"] == "after_device_create_fail"]
    assert len(fails) == 2 and "undo: hook/hook_failed" in fails[0]["stderr_tail"]
    assert d["state"] == "undefined"


def test_device_destroy_runs_per_device_on_destroy_and_undefine_and_cannot_veto(
    env, tap, start_worker, test_domains, hooks_root, tmp_path
):
    seen = tmp_path / "destroy"
    seen.mkdir()
    hook(
        hooks_root,
        "before_device_destroy",
        "10_log",
        sh(
            f'cat "$_hook_domxml" > {seen}/"$_hook_op-$(date +%s%N)-$nic_model.xml"\n'
            "echo 'refusing' >&2; exit 2"
        ),
    )
    hook(hooks_root, "after_device_destroy", "10_ok", sh("exit 0"))
    start_worker()
    vm = vm_spec()
    test_domains.append(vm["uuid"])
    assert run(env, tap, "start_vm", vm)["phase"] == "after"

    d = run(env, tap, "destroy_vm", {"uuid": vm["uuid"]})
    assert d["phase"] == "after" and d["state"] == "shutoff"  # the hook's rc 2 vetoes nothing
    devices = ran(d, "before_device_destroy")
    assert devices[0] == "disk:vda" and devices[1].startswith("interface:")
    assert [h["rc"] for h in d["hooks"] if h["point"] == "before_device_destroy"] == [2, 2]
    assert ran(d, "after_device_destroy") == devices
    files = sorted(p.name for p in seen.iterdir())
    assert [f.split("-")[0] for f in files] == ["destroy_vm"] * 2
    # the NIC's own custom property, read back from the domain's metadata
    nic_file = next(p for p in seen.iterdir() if p.name.endswith("-e1000.xml"))
    assert nic_file.read_text().startswith("<interface")

    d = run(env, tap, "undefine_vm", {"uuid": vm["uuid"]})
    assert d["phase"] == "after" and d["state"] == "undefined"
    assert ran(d, "before_device_destroy") == devices
    assert sum(p.name.startswith("undefine_vm") for p in seen.iterdir()) == 2


def test_after_get_caps_adds_a_key_the_inventory_carries(env, tap, start_worker, hooks_root):
    hook(
        hooks_root,
        "after_get_caps",
        "50_rack",
        "#!/usr/bin/env python3\n"
        "import hooking\n"
        "caps = hooking.read_json()\n"
        "caps['rack'] = {'row': 4, 'seen_host': caps['host']}\n"
        "hooking.write_json(caps)\n",
    )
    start_worker(heartbeat_interval=0.5)
    inv = tap.wait(
        lambda: [e for e in tap.events if e["type"] == "vmworker.host.inventory"], timeout=10
    )[0]
    assert inv["data"]["rack"] == {"row": 4, "seen_host": env.host}
    assert inv["data"]["host"] == env.host and "domains" in inv["data"]
    beat = tap.wait(
        lambda: [e for e in tap.events if e["type"] == "vmworker.host.heartbeat"], timeout=10
    )[0]  # the inventory's digest covers what the hook added; the heartbeat only names it
    assert "rack" not in beat["data"]
    assert beat["data"]["inventory_digest"] == inv["data"]["inventory_digest"]


def test_vdsm_start_and_stop_run_after_the_workers_own_chains(
    env, start_worker, hooks_root: Path, tmp_path: Path
):
    log = tmp_path / "host.log"
    for point in ("before_vmworker_start", "before_vdsm_start"):
        hook(hooks_root, point, "10_log", sh(f'echo "$_hook_point $(cat "$_hook_json")" >> {log}'))
    for point in ("after_vmworker_stop", "after_vdsm_stop"):
        hook(hooks_root, point, "10_log", sh(f'echo "$_hook_point" >> {log}'))
    w = start_worker()
    lines = log.read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["before_vmworker_start", "before_vdsm_start"]
    assert json.loads(lines[1].split(" ", 1)[1]) == {"host": env.host}
    w.stop()
    wait_for(lambda: len(log.read_text().splitlines()) == 4, 10, "the stop chains")
    assert log.read_text().split()[-2:] == ["after_vmworker_stop", "after_vdsm_stop"]


@pytest.mark.qemu
def test_nic_custom_reaches_device_create_and_hotplug_hooks_on_real_qemu(
    env,
    tap,
    start_worker,
    qemu_domains,
    hooks_root,
    bridge,  # noqa: F811 - the fixture imported above
):
    hook(hooks_root, "before_device_create", "50_nic_model", SET_NIC_MODEL)
    hook(hooks_root, "before_nic_hotplug", "50_nic_model", SET_NIC_MODEL)
    env.libvirt_uri = QEMU_URI
    start_worker()
    vm = small_vm("devc")
    vm["nics"] = [{"source": bridge, "custom": {"nic_model": "e1000"}}]
    qemu_domains.append(vm["uuid"])
    d = dict(tap.wait_terminal(env.publish("start_vm", vm), timeout=60)["data"])
    assert d["phase"] == "after", d.get("error")
    d = dict(
        tap.wait_terminal(
            env.publish(
                "attach_nic",
                {"uuid": vm["uuid"]},
                params={"nic": {"source": bridge, "custom": {"nic_model": "rtl8139"}}},
            ),
            timeout=60,
        )["data"]
    )
    assert d["phase"] == "after", d.get("error")
    live = etree.fromstring(libvirt.open(QEMU_URI).lookupByUUIDString(vm["uuid"]).XMLDesc(0))
    models = [m.get("type") for m in live.iterfind("devices/interface/model")]
    assert models == ["e1000", "rtl8139"]
