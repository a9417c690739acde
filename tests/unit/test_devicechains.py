"""Device hook chains (worker/devicechains.py) and the host chain over the heartbeat's inventory
(`after_get_caps`), on a hooks root of their own: no broker, no libvirt."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from handlers.connection import LibvirtConnection
from handlers.domxml import build_domain_xml
from handlers.spec import VmSpec
from worker import devicechains, heartbeat
from worker.devicechains import run_device_chains
from worker.heartbeat import Heartbeat
from worker.hooks import Completed, HookEngine, ProcessRunner
from worker.messages import parse_operation

UUID = "0b7c2f1e-1111-2222-3333-444455556666"


def hook(root: Path, point: str, name: str, body: str) -> Path:
    d = root / point
    d.mkdir(mode=0o755, exist_ok=True)
    p = d / name
    p.write_text(body)
    p.chmod(0o755)
    return p


def sh(body: str) -> str:
    return "#!/bin/sh\n" + body + "\n"


class Recording:
    """A runner that counts the processes it is asked to start."""

    def __init__(self) -> None:
        self.runs = 0
        self.inner = ProcessRunner()

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        timeout: float,
        output_limit: int,
    ) -> Completed:
        self.runs += 1
        return self.inner.run(argv, env, cwd, timeout, output_limit)


def domain(**kw: Any) -> str:
    spec = VmSpec.model_validate(
        {
            "uuid": UUID,
            "name": "dev",
            "disks": [
                {"path": "/img/a.raw", "format": "raw", "custom": {"disk_tag": "boot"}},
                {"path": "/img/b.raw", "format": "raw"},
            ],
            "nics": [{"source": "br0", "custom": {"extnet": "red", "role": "nic"}}],
            "pci_devices": [{"address": "0000:03:00.0"}],
            "graphics": {"type": "vnc"},
            **kw,
        }
    )
    return build_domain_xml(spec, domain_type="kvm")


def test_no_hook_means_nothing_parsed_and_nothing_started(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = Recording()
    engine = HookEngine(root, inproc=False, runner=runner)

    def never(*_: object, **__: object) -> Any:
        raise AssertionError("parsed with no hook to run")

    monkeypatch.setattr(devicechains.etree, "fromstring", never)
    monkeypatch.setattr(devicechains, "device_elements", never)
    monkeypatch.setattr(devicechains, "read_custom", never)
    xml = domain()
    for base in ("device_create", "device_destroy", "device_migrate_destination"):
        for point in (f"before_{base}", f"after_{base}", f"after_{base}_fail"):
            out = run_device_chains(engine, point, xml, vm_id=UUID)
            assert out.payload is xml and out.hooks == [] and out.devices == []
    (root / "before_device_create").mkdir()  # an empty directory is no hook either
    assert run_device_chains(engine, "before_device_create", xml, vm_id=UUID).hooks == []
    assert runner.runs == 0


def test_one_chain_per_device_with_custom_with_its_xml_and_its_custom_over_the_messages(
    root: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    hook(
        root,
        "before_device_create",
        "10_log",
        sh(
            f'{{ head -c 40 "$_hook_domxml" | tr -d "\\n"; echo " extnet=$extnet'
            f' disk_tag=$disk_tag site=$site role=$role"; }} >> {seen}'
        ),
    )
    engine = HookEngine(root, inproc=False)
    out = run_device_chains(
        engine,
        "before_device_create",
        domain(pci_devices=[{"address": "0000:03:00.0", "custom": {"role": "gpu"}}]),
        vm_id=UUID,
        custom={"site": "a", "role": "vm"},
    )
    lines = seen.read_text().splitlines()
    # the disk, NIC and PCI device with custom properties; not vdb (none), not the graphics
    assert len(lines) == 3
    assert lines[0].startswith('<disk type="file" device="disk">')
    assert lines[0].endswith("extnet= disk_tag=boot site=a role=vm")
    assert lines[1].startswith('<interface type="bridge">')
    assert lines[1].endswith("extnet=red disk_tag= site=a role=nic")  # the device's wins
    assert lines[2].startswith('<hostdev mode="subsystem" type="pci"')
    assert lines[2].endswith("role=gpu")
    assert out.devices[0] == "disk:vda" and out.devices[2] == "hostdev:pci:0:3:0.0"
    assert out.devices[1].startswith("interface:52:54:00:")
    assert [(h["point"], h["device"], h["name"], h["rc"]) for h in out.hooks] == [
        ("before_device_create", d, "10_log", 0) for d in out.devices
    ]
    assert out.failed is None and out.error() is None


def test_no_device_with_custom_means_no_device_chain(root: Path, tmp_path: Path) -> None:
    hook(root, "before_device_create", "10_any", sh("exit 2"))
    xml = domain(disks=[{"path": "/img/a.raw", "format": "raw"}], nics=[{"source": "br0"}])
    out = run_device_chains(
        HookEngine(root, inproc=False), "before_device_create", xml, vm_id=UUID, custom={"a": "b"}
    )
    assert out.payload is xml and out.hooks == [] and out.failed is None


def test_a_device_edit_is_put_back_into_the_domain_xml(root: Path) -> None:
    hook(
        root,
        "before_device_create",
        "50_extnet",
        "#!/usr/bin/env python3\n"
        "import os, hooking\n"
        "if 'extnet' in os.environ:\n"
        "    doc = hooking.read_domxml()\n"
        "    iface = doc.getElementsByTagName('interface')[0]\n"
        "    src = iface.getElementsByTagName('source')[0]\n"
        "    src.setAttribute('bridge', os.environ['extnet'])\n"
        "    hooking.write_domxml(doc)\n",
    )
    engine = HookEngine(root, inproc=False)
    xml = domain()
    out = run_device_chains(engine, "before_device_create", xml, vm_id=UUID)
    tree = etree.fromstring(out.payload)
    assert tree.find("devices/interface/source").get("bridge") == "red"
    # the rest of the domain is as it was, devices in their places
    assert [e.tag for e in tree.find("devices")] == [
        e.tag for e in etree.fromstring(xml).find("devices")
    ]
    (nic,) = [h for h in out.hooks if h["device"].startswith("interface:")]
    assert nic["changed_xml"] is True
    assert not any(h["changed_xml"] for h in out.hooks if h is not nic)


def test_a_failing_before_chain_stops_at_its_device_and_names_it(root: Path) -> None:
    hook(
        root,
        "before_device_create",
        "10_refuse_nics",
        sh('grep -q "<interface" "$_hook_domxml" && { echo "no NIC here" >&2; exit 1; }; exit 0'),
    )
    engine = HookEngine(root, inproc=False)
    out = run_device_chains(engine, "before_device_create", domain(), vm_id=UUID)
    assert len(out.devices) == 2 and out.devices[1].startswith("interface:")  # no more
    err = out.error()
    assert err is not None and err.source == "hook" and err.hook == "10_refuse_nics"
    assert out.devices[1] in err.message and "no NIC here" in err.details["stderr"]


def test_after_and_report_only_chains_run_for_every_device_despite_failures(root: Path) -> None:
    for point in ("after_device_create", "before_device_destroy"):
        hook(root, point, "10_fail", sh("exit 1"))
    engine = HookEngine(root, inproc=False)
    for point in ("after_device_create", "before_device_destroy"):
        out = run_device_chains(engine, point, domain(), vm_id=UUID)
        assert len(out.devices) == 2 and all(h["rc"] == 1 for h in out.hooks)
        assert out.failed is not None and out.failed[0] == "disk:vda"


def test_an_incoming_domain_runs_device_migrate_destination_with_its_stored_custom(
    root: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    for phase in ("before", "after"):
        hook(
            root,
            f"{phase}_device_migrate_destination",
            "10_log",
            sh(f'echo "$_hook_point $extnet" >> {seen}'),
        )
    engine = HookEngine(root, inproc=False)
    incoming = domain()  # as the source host defined it: device custom in its metadata
    for phase in ("before", "after"):
        run_device_chains(engine, f"{phase}_device_migrate_destination", incoming, vm_id=UUID)
    assert seen.read_text().splitlines() == [  # the devices with custom: vda, then the NIC
        "before_device_migrate_destination ",
        "before_device_migrate_destination red",
        "after_device_migrate_destination ",
        "after_device_migrate_destination red",
    ]


def test_device_custom_follows_the_hook_engines_rule_on_names() -> None:
    def body(custom: dict[str, str]) -> bytes:
        vm = {"uuid": UUID, "name": "d", "nics": [{"source": "br0", "custom": custom}]}
        return json.dumps({"op": "define_vm", "vm": vm}).encode()

    assert parse_operation(body({"extnet": "red"}), max_bytes=1 << 20).vm.nics[0].custom == {
        "extnet": "red"
    }
    for bad in ({"LD_PRELOAD": "x"}, {"a-b": "x"}, {"_hook_domxml": "/etc/passwd"}):
        with pytest.raises(Exception) as exc:
            parse_operation(body(bad), max_bytes=1 << 20)
        assert getattr(exc.value, "code", None) == "bad_custom", exc.value
        assert "vm.nics.0.custom" in str(exc.value)


# -- after_get_caps over the heartbeat's inventory ----------------------------------------------
def beat(engine: HookEngine) -> Heartbeat:
    return Heartbeat(
        host="h1",
        interval=5.0,
        sink=lambda *_: None,
        libvirt_conn=LibvirtConnection("test:///default"),
        hooks=engine,
    )


INVENTORY = {"host": "h1", "domains": [], "hooks": {}}


def test_after_get_caps_adds_keys_but_cannot_change_the_workers(root: Path) -> None:
    hook(
        root,
        "after_get_caps",
        "50_site",
        "#!/usr/bin/env python3\n"
        "import hooking\n"
        "caps = hooking.read_json()\n"
        "caps['site'] = {'rack': 'r12'}\n"
        "caps['host'] = 'forged'\n"
        "hooking.write_json(caps)\n",
    )
    out = beat(HookEngine(root, inproc=False))._after_get_caps(dict(INVENTORY))
    assert out == {**INVENTORY, "site": {"rack": "r12"}}


@pytest.mark.parametrize(
    "body",
    [
        sh('echo \'{"site": 1}\' > "$_hook_json"; exit 1'),  # failed: its edit is dropped
        sh('echo "[1, 2]" > "$_hook_json"'),  # not an object
        sh("sleep 30"),  # slower than the hook timeout
    ],
    ids=["failed", "not-an-object", "timed-out"],
)
def test_a_failing_after_get_caps_hook_leaves_the_inventory_as_it_was(
    root: Path, body: str
) -> None:
    hook(root, "after_get_caps", "50_bad", body)
    out = beat(HookEngine(root, inproc=False, timeout=0.5))._after_get_caps(dict(INVENTORY))
    assert out == INVENTORY


def test_no_after_get_caps_hook_means_no_serializing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoJson:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"json.{name} with no hook to run")

    monkeypatch.setattr(heartbeat, "json", NoJson())
    inv = dict(INVENTORY)
    assert beat(HookEngine(root, inproc=False))._after_get_caps(inv) is inv


def test_a_hostile_name_in_the_domains_stored_custom_never_reaches_a_hook(
    root: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    hook(root, "before_device_destroy", "10_env", sh(f'echo "[$LD_PRELOAD] [$extnet]" >> {seen}'))
    xml = domain(disks=[], pci_devices=[]).replace(
        '<vmworker-devices:custom name="extnet">',
        '<vmworker-devices:custom name="LD_PRELOAD">/tmp/evil.so</vmworker-devices:custom>'
        '<vmworker-devices:custom name="extnet">',
    )
    assert "LD_PRELOAD" in xml  # as a domain edited behind the worker's back would hold it
    out = run_device_chains(
        HookEngine(root, inproc=False), "before_device_destroy", xml, vm_id=UUID
    )
    assert out.failed is None and seen.read_text() == "[] [red]\n"
