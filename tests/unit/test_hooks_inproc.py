"""In-process hooks: entry points of group `vmworker.hooks`, from a dist-info on sys.path."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from lxml import etree

from worker.hooks import HookEngine

DOMXML = "<domain><name>web-1</name><uuid>u-1</uuid><devices/></domain>"

MODULE = """
import time
from lxml import etree
from worker.hooks import HookFailed

def describe(tree, ctx):
    desc = etree.SubElement(tree.getroot(), "description")
    desc.text = f"{ctx.point} {ctx.vm_id} {ctx.custom.get('owner')} {ctx.context.get('op')}"

def replace_root(tree, ctx):
    root = etree.fromstring("<domain><name>replaced</name></domain>")
    return root

def stop(tree, ctx):
    raise HookFailed("policy says no", rc=2)

def edit_then_crash(tree, ctx):
    tree.getroot().find("name").text = "half-done"
    raise RuntimeError("boom")

def slow(tree, ctx):
    time.sleep(1.5)
    tree.getroot().find("name").text = "late"

def add_key(data, ctx):
    data["inproc"] = True
    return data

def bad_result(tree, ctx):
    return 42

not_callable = 3
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install a fake distribution whose entry points are given as `name = func` lines."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "vmw_fake_hooks.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(site))

    def install(*entries: str) -> None:
        info = site / "vmw_fake_hooks-1.0.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: vmw-fake-hooks\nVersion: 1.0\n"
        )
        lines = "\n".join(entries)
        (info / "entry_points.txt").write_text(f"[vmworker.hooks]\n{lines}\n")

    return install


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "hooks"
    r.mkdir()
    r.chmod(0o755)
    return r


def script(root: Path, point: str, name: str, body: str) -> None:
    d = root / point
    d.mkdir(exist_ok=True)
    d.chmod(0o755)
    p = d / name
    p.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    p.chmod(0o755)


def run(root: Path, point: str = "before_vm_start", payload: str = DOMXML, **kw):
    engine_kw = {k: kw.pop(k) for k in ("timeout", "inproc") if k in kw}
    return HookEngine(root, **engine_kw).run_chain(point, payload, vm_id="u-1", **kw)


def test_inproc_hook_ordered_with_scripts(root: Path, site) -> None:
    site("before_vm_start:20_describe = vmw_fake_hooks:describe")
    script(root, "before_vm_start", "10_rename", 'sed -i "s/web-1/web-2/" "$_hook_domxml"\n')
    script(root, "before_vm_start", "30_check", 'grep -q "<description>" "$_hook_domxml"\n')

    res = run(root, custom={"owner": "ops"}, context={"op": "start_vm"})

    assert [(s.name, s.kind, s.rc) for s in res.scripts] == [
        ("10_rename", "script", 0),
        ("20_describe", "inproc", 0),
        ("30_check", "script", 0),
    ]
    assert res.scripts[1].changed_xml
    dom = etree.fromstring(res.payload)
    assert dom.findtext("name") == "web-2"
    assert dom.findtext("description") == "before_vm_start u-1 ops start_vm"


def test_inproc_hook_may_return_a_new_root(root: Path, site) -> None:
    site("before_vm_start:10_replace = vmw_fake_hooks:replace_root")
    res = run(root)
    assert etree.fromstring(res.payload).findtext("name") == "replaced"


def test_inproc_hook_failed_rc2_stops_the_chain(root: Path, site) -> None:
    site("before_vm_start:10_stop = vmw_fake_hooks:stop")
    script(root, "before_vm_start", "20_never", "exit 0\n")
    res = run(root)
    assert res.stopped and [s.name for s in res.scripts] == ["10_stop"]
    assert res.scripts[0].stderr_tail == "policy says no"


def test_inproc_exception_is_rc1_and_its_edit_discarded(root: Path, site) -> None:
    site("before_vm_start:10_crash = vmw_fake_hooks:edit_then_crash")
    res = run(root)
    (s,) = res.scripts
    assert s.rc == 1 and "RuntimeError: boom" in s.stderr_tail
    assert s.discarded == "exited 1" and res.payload == DOMXML


def test_inproc_timeout_discards_the_late_result(root: Path, site) -> None:
    site("before_vm_start:10_slow = vmw_fake_hooks:slow")
    res = run(root, timeout=0.2)
    (s,) = res.scripts
    assert s.timed_out and s.rc != 0 and res.payload == DOMXML


def test_inproc_json_point(root: Path, site) -> None:
    site("before_vmworker_start:10_key = vmw_fake_hooks:add_key")
    res = run(root, "before_vmworker_start", json.dumps({"host": "h"}))
    assert json.loads(res.payload) == {"host": "h", "inproc": True}


def test_inproc_unserializable_result_is_discarded(root: Path, site) -> None:
    site("before_vm_start:10_bad = vmw_fake_hooks:bad_result")
    res = run(root)
    assert "cannot serialize" in (res.scripts[0].discarded or "")
    assert res.payload == DOMXML


def test_unloadable_inproc_hook_is_refused(root: Path, site) -> None:
    site(
        "before_vm_start:10_missing = vmw_fake_hooks:no_such_function",
        "before_vm_start:20_notcallable = vmw_fake_hooks:not_callable",
        "no_colon = vmw_fake_hooks:describe",
        "before_nothing:10_x = vmw_fake_hooks:describe",
    )
    res = run(root)
    assert [(s.name, s.rc) for s in res.scripts] == [("10_missing", 1), ("20_notcallable", 1)]
    assert "cannot load" in (res.scripts[0].refused or "")
    assert "not callable" in (res.scripts[1].refused or "")


def test_inproc_hooks_can_be_turned_off(root: Path, site) -> None:
    site("before_vm_start:20_describe = vmw_fake_hooks:describe")
    assert run(root, inproc=False).scripts == []


def test_inventory_lists_inproc_hooks_with_the_module_checksum(root: Path, site) -> None:
    site("after_vm_start:10_describe = vmw_fake_hooks:describe")
    inv = HookEngine(root).inventory()
    (entry,) = inv["after_vm_start"]
    assert entry["kind"] == "inproc" and entry["refused"] is None
    import hashlib

    module_file = Path(sys.modules["vmw_fake_hooks"].__file__ or "")
    assert entry["sha256"] == hashlib.sha256(module_file.read_bytes()).hexdigest()
