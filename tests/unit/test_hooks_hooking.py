# ruff: noqa: E501  (the article's script is kept as published)
"""The `hooking` helper module and VDSM scripts running unmodified."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from worker.hooks import HookEngine
from worker.hooks.engine import HOOKLIB

UUID = "c6ea26ae-05d2-4a60-92fe-b15ecde2fcf6"
DOMXML = f"""<domain type='kvm'>
  <name>test-window7</name>
  <uuid>{UUID}</uuid>
  <devices>
    <emulator>/usr/libexec/qemu-kvm</emulator>
  </devices>
</domain>"""

# The article's 50_vm_channels verbatim (its Chinese comments and trailing blanks, written
# as \x20, included); only the interpreter line is python3 instead of python2.
SEED_VM_CHANNELS = """#!/usr/bin/env python3

import os
import hooking                                                                   #导入hooking模块
import uuid

VM_CHANNELS_PATH = "/var/lib/libvirt/qemu/channels/"                             #libvirt的channels路径
VM_CHANNELS_NAME = ["tools-guest-agent.0", "ovirt-client-redirect.0"]            #通道的名称


def get_vm_uuid():                                                              #获取虚拟机的UUID函数
    domxml = hooking.read_domxml()
    domain = domxml.getElementsByTagName('domain')[0]
    name = domain.getElementsByTagName('uuid')[0].childNodes[0].nodeValue
    hooking.log("vm-uuid: %s" % name)
    return name


def create_channel(channel_name):
    domxml = hooking.read_domxml()                                             #读取虚拟机的xml,即读取临时文件data_filename的内容
    devs = domxml.getElementsByTagName('devices')[0]                           #提取设备devices元素

    channel = domxml.createElement('channel')                                  #创建channel元素,并设置属性type=unix
    channel.setAttribute('type', 'unix')

    vm_uuid = get_vm_uuid()
    valid_channel_name = vm_uuid + "." + channel_name
    path = os.path.join(VM_CHANNELS_PATH, valid_channel_name)                  #组织channel的路径信息
    source = domxml.createElement('source')                                    #创建source元素,并设置属性mode=bind,path=path
    source.setAttribute('mode', 'bind')
    source.setAttribute('path', path)

    target = domxml.createElement('target')                               #创建target元素,并设置属性type=virtio,name=channel_name
    target.setAttribute('type', 'virtio')
    target.setAttribute('name', channel_name)
    channel.appendChild(source)                                                #将source元素,target元素包含在channel元素下面。
    channel.appendChild(target)\x20\x20
    devs.appendChild(channel)                                                  #将channel元素包含在devices元素下面。\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20

    hooking.write_domxml(domxml)                                               #将修改后的domxml信息写入临时文件data_filename中


for name in VM_CHANNELS_NAME:                                                  #遍历通道列表,创建通道
    create_channel(name)
"""


@pytest.fixture(autouse=True)
def fast_python3(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """`#!/usr/bin/env python3` finds this interpreter first (no version-manager shim)."""
    bindir = tmp_path_factory.mktemp("bin")
    (bindir / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "hooks"
    (r / "before_vm_start").mkdir(parents=True)
    r.chmod(0o755)
    (r / "before_vm_start").chmod(0o755)
    return r


def test_seed_vm_channels_runs_unmodified(root: Path) -> None:
    script = root / "before_vm_start" / "50_vm_channels"
    script.write_text(SEED_VM_CHANNELS)
    script.chmod(0o755)

    res = HookEngine(root, inproc=False).run_chain("before_vm_start", DOMXML, vm_id=UUID)

    (s,) = res.scripts
    assert s.rc == 0 and s.changed_xml, s.stderr_tail
    assert s.stderr_tail.count(f"vm-uuid: {UUID}") == 2
    channels = etree.fromstring(res.payload).findall("devices/channel")
    assert [(c.get("type"), c.find("target").get("name")) for c in channels] == [
        ("unix", "tools-guest-agent.0"),
        ("unix", "ovirt-client-redirect.0"),
    ]
    assert channels[0].find("source").get("path") == (
        f"/var/lib/libvirt/qemu/channels/{UUID}.tools-guest-agent.0"
    )


def _hooking(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PYTHONPATH": str(HOOKLIB)}
    return subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, check=False
    )


def test_hooking_json_roundtrip(tmp_path: Path) -> None:
    f = tmp_path / "data.json"
    f.write_text('{"a": 1}')
    r = _hooking(
        "import hooking; d = hooking.read_json(); d['b'] = 2; hooking.write_json(d)",
        {"_hook_json": str(f)},
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(f.read_text()) == {"a": 1, "b": 2}


def test_hooking_exit_hook_and_log(tmp_path: Path) -> None:
    r = _hooking("import hooking; hooking.log('one'); hooking.exit_hook('bye')", {})
    assert r.returncode == 2 and r.stderr == "one\nbye\n"
    r = _hooking("import hooking; hooking.exit_hook('soft', return_code=1)", {})
    assert r.returncode == 1


def test_hooking_domxml_roundtrip_keeps_text(tmp_path: Path) -> None:
    f = tmp_path / "d.xml"
    f.write_text("<domain><name>caf\u00e9</name></domain>", encoding="utf-8")
    r = _hooking(
        "import hooking; d = hooking.read_domxml(); hooking.write_domxml(d)",
        {"_hook_domxml": str(f)},
    )
    assert r.returncode == 0, r.stderr
    assert etree.fromstring(f.read_bytes()).findtext("name") == "caf\u00e9"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("1", True),
        ("2", True),
        (True, True),
        ("false", False),
        ("0", False),
        ("", False),
        ("yes", False),
        (None, False),
        (False, False),
    ],
)
def test_hooking_tobool_matches_vdsm(value: object, expected: bool) -> None:
    sys.path.insert(0, str(HOOKLIB))
    try:
        import hooking

        assert hooking.tobool(value) is expected
    finally:
        sys.path.remove(str(HOOKLIB))


def test_hooking_execcmd_returns_bytes_as_vdsm() -> None:
    sys.path.insert(0, str(HOOKLIB))
    try:
        import hooking

        rc, out, err = hooking.execCmd(["sh", "-c", "echo a; echo b; echo e >&2; exit 3"])
        assert (rc, out, err) == (3, [b"a", b"b"], [b"e"])
        rc, out, err = hooking.execCmd(["echo", "x"], raw=True)
        assert (rc, out, err) == (0, b"x\n", b"")
        rc, out, _ = hooking.execCmd(["cat"], data=b"in", raw=True)
        assert (rc, out) == (0, b"in")
    finally:
        sys.path.remove(str(HOOKLIB))
