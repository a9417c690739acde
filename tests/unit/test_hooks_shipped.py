"""The hooks shipped in hookdirs/, run through the engine from a private copy."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from lxml import etree

from worker.hooks import POINTS, HookEngine

HOOKDIRS = Path(__file__).resolve().parents[2] / "hookdirs"
UUID = "6f1c1f2e-8d4b-4d0e-9a57-2f6f4f0b9a11"
DOMXML = f"""<domain type='kvm'>
  <name>web-1</name>
  <uuid>{UUID}</uuid>
  <devices>
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
  </devices>
</domain>"""


@pytest.fixture(autouse=True)
def fast_python3(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """`#!/usr/bin/env python3` finds this interpreter first (no version-manager shim)."""
    bindir = tmp_path_factory.mktemp("bin")
    (bindir / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")


def install(tmp_path: Path, *scripts: str) -> Path:
    """A hooks root holding copies of the named shipped scripts ('point/name')."""
    root = tmp_path / "hooks"
    for rel in scripts:
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HOOKDIRS / rel, dst)
        dst.chmod(0o755)
        dst.parent.chmod(0o755)
    root.chmod(0o755)
    return root


def chain(root: Path, payload: str = DOMXML, point: str = "before_vm_start", **kw):
    return HookEngine(root, inproc=False).run_chain(point, payload, vm_id=UUID, **kw)


def test_hookdirs_has_a_directory_per_point() -> None:
    assert {p.name for p in HOOKDIRS.iterdir() if p.is_dir()} == set(POINTS)


@pytest.mark.parametrize(
    "rel",
    ["before_vm_start/50_vm_channels", "before_vm_start/50_nestedvt", "after_vm_start/50_report"],
)
def test_shipped_hooks_are_executable_python3(rel: str) -> None:
    path = HOOKDIRS / rel
    assert os.access(path, os.X_OK)
    assert path.read_text().startswith("#!/usr/bin/env python3\n")


# --- 50_vm_channels ----------------------------------------------------------------------


def _channels(xml: str) -> list[tuple[str | None, str | None]]:
    return [
        (c.find("target").get("name"), c.find("source").get("path"))
        for c in etree.fromstring(xml).iter("channel")
    ]


def test_vm_channels_adds_the_channels_named_after_the_uuid(tmp_path: Path) -> None:
    root = install(tmp_path, "before_vm_start/50_vm_channels")
    res = chain(root)
    assert not res.failed, res.failure_stderr()
    assert _channels(res.payload)[1:] == [
        ("tools-guest-agent.0", f"/var/lib/libvirt/qemu/channels/{UUID}.tools-guest-agent.0"),
        (
            "ovirt-client-redirect.0",
            f"/var/lib/libvirt/qemu/channels/{UUID}.ovirt-client-redirect.0",
        ),
    ]


def test_vm_channels_is_idempotent(tmp_path: Path) -> None:
    root = install(tmp_path, "before_vm_start/50_vm_channels")
    once = chain(root)
    twice = chain(root, once.payload)
    assert not twice.failed and not twice.scripts[0].changed_xml
    assert twice.payload == once.payload
    assert len(_channels(twice.payload)) == 3


def test_vm_channels_custom_list_and_bad_names(tmp_path: Path) -> None:
    root = install(tmp_path, "before_vm_start/50_vm_channels")
    res = chain(root, custom={"vm_channels": "com.example.agent.0"})
    assert [n for n, _ in _channels(res.payload)][1:] == ["com.example.agent.0"]

    res = chain(root, custom={"vm_channels": "../../etc/evil"})
    assert res.failed and "bad channel name" in res.scripts[0].stderr_tail
    assert res.payload == DOMXML

    res = chain(root, custom={"vm_channels": ""})
    assert not res.failed and res.payload == DOMXML


# --- 50_nestedvt -------------------------------------------------------------------------


@pytest.fixture
def cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def make(flags: str) -> None:
        f = tmp_path / "cpuinfo"
        f.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags} lm\n\nprocessor\t: 1\n")
        monkeypatch.setenv("VMWORKER_CPUINFO", str(f))

    return make


def _features(xml: str) -> list[tuple[str | None, str | None]]:
    cpu = etree.fromstring(xml).find("cpu")
    assert cpu is not None
    return [(f.get("name"), f.get("policy")) for f in cpu.findall("feature")]


def test_nestedvt_adds_vmx_to_a_new_cpu_element(tmp_path: Path, cpuinfo) -> None:
    cpuinfo("vmx ept")
    root = install(tmp_path, "before_vm_start/50_nestedvt")
    res = chain(root, custom={"nestedvt": "true"})
    assert not res.failed, res.failure_stderr()
    assert _features(res.payload) == [("vmx", "require")]


def test_nestedvt_adds_svm_to_an_existing_cpu_once(tmp_path: Path, cpuinfo) -> None:
    cpuinfo("svm npt")
    root = install(tmp_path, "before_vm_start/50_nestedvt")
    xml = DOMXML.replace(
        "<devices>", "<cpu mode='host-model'><feature policy='disable' name='svm'/></cpu><devices>"
    )
    res = chain(root, xml, custom={"nestedvt": "1"})
    assert _features(res.payload) == [("svm", "require")]
    again = chain(root, res.payload, custom={"nestedvt": "1"})
    assert not again.scripts[0].changed_xml


@pytest.mark.parametrize("custom", [{}, {"nestedvt": "false"}, {"nestedvt": "0"}])
def test_nestedvt_does_nothing_unless_asked(tmp_path: Path, cpuinfo, custom) -> None:
    cpuinfo("vmx")
    root = install(tmp_path, "before_vm_start/50_nestedvt")
    res = chain(root, custom=custom)
    assert not res.failed and res.payload == DOMXML


def test_nestedvt_stops_the_chain_without_host_support(tmp_path: Path, cpuinfo) -> None:
    cpuinfo("sse4_2")
    root = install(tmp_path, "before_vm_start/50_nestedvt", "before_vm_start/50_vm_channels")
    res = chain(root, custom={"nestedvt": "true"})
    assert res.stopped and [s.name for s in res.scripts] == ["50_nestedvt"]
    assert "no vmx/svm" in res.failure_stderr()


# --- 50_report ---------------------------------------------------------------------------


def test_report_logs_one_line_and_exits_0(tmp_path: Path) -> None:
    root = install(tmp_path, "after_vm_start/50_report")
    res = chain(root, point="after_vm_start", context={"host": "h1", "request_id": "r-9"})
    (s,) = res.scripts
    assert s.rc == 0 and not s.changed_xml
    assert s.stderr_tail == f"50_report: vm web-1 ({UUID}) started on h1, request r-9\n"


def test_report_never_fails(tmp_path: Path) -> None:
    root = install(tmp_path, "after_vm_start/50_report")
    res = chain(root, "not xml", point="after_vm_start")
    assert res.scripts[0].rc == 0
