"""In-process hooks: entry points of group `vmworker.hooks`, from a dist-info on sys.path."""

from __future__ import annotations

import json
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest
import structlog
from lxml import etree
from structlog.testing import capture_logs

from tests.support import wait_until
from worker.hooks import HookEngine
from worker.hooks.inproc import HookRun

DOMXML = "<domain><name>web-1</name><uuid>u-1</uuid><devices/></domain>"

MODULE = """
import os
import tempfile
import threading
import time
from lxml import etree
from worker.hooks import HookFailed

SEEN = {}  # ctx.context["test"] -> what the hooks saw and did, in order
GATES = {}  # ctx.context["test"] -> the event a hanging hook waits for (at most custom["hang"] s)


def _hang(ctx):
    GATES.setdefault(ctx.context["test"], threading.Event()).wait(float(ctx.custom["hang"]))


def _note(ctx, what):
    SEEN.setdefault(ctx.context["test"], []).append(what)

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

def add_a(tree, ctx):
    etree.SubElement(tree.getroot(), "a")

def see(tree, ctx):
    _note(ctx, "see " + etree.tostring(tree).decode())
    etree.SubElement(tree.getroot(), "b")

def hang_then_edit(tree, ctx):
    _hang(ctx)
    tree.getroot().find("name").text = "late"
    etree.SubElement(tree.getroot(), "late")
    _note(ctx, "late")

def hang_then_return(tree, ctx):
    _hang(ctx)
    _note(ctx, "late")
    return etree.fromstring("<domain><name>late</name></domain>")

def list_tmp(tree, ctx):
    _note(ctx, sorted(os.listdir(tempfile.gettempdir())))

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


def script(root: Path, point: str, name: str, body: str) -> None:
    d = root / point
    d.mkdir(exist_ok=True)
    d.chmod(0o755)
    p = d / name
    p.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    p.chmod(0o755)


@pytest.fixture
def runs_ended(monkeypatch: pytest.MonkeyPatch):
    """runs_ended() waits (10 s at most) until every run of in-process hooks handed to a hook
    thread since the fixture was made has ended: returned, failed or abandoned."""
    started, ended = [0], [0]
    cv = threading.Condition()
    start = HookRun.start

    def counted_start(self: HookRun, body) -> None:  # type: ignore[no-untyped-def]
        def counted(run: HookRun) -> None:
            try:
                body(run)
            finally:
                with cv:
                    ended[0] += 1
                    cv.notify_all()

        with cv:
            started[0] += 1
        start(self, counted)

    monkeypatch.setattr(HookRun, "start", counted_start)

    def wait() -> None:
        with cv:
            assert cv.wait_for(lambda: ended[0] == started[0], 10), (started, ended)

    return wait


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


def _seen(test: str, until: str | None = None, wait: float = 5.0) -> list:
    """What the fake hooks noted for `test`, once `until` is among it (or after `wait`)."""
    mod = sys.modules["vmw_fake_hooks"]
    if until is not None:
        wait_until(lambda: until in mod.SEEN.get(test, []), wait, interval=0.02)
    return list(mod.SEEN.get(test, []))


@pytest.mark.parametrize("hung", ["hang_then_edit", "hang_then_return"])
def test_hook_hanging_in_a_run_times_out_and_the_rest_go_on(
    root: Path, site, runs_ended, hung: str
) -> None:
    site(
        "before_vm_start:10_a = vmw_fake_hooks:add_a",
        f"before_vm_start:20_hang = vmw_fake_hooks:{hung}",
        "before_vm_start:30_see = vmw_fake_hooks:see",
    )
    test = f"hang-{hung}"
    with capture_logs() as logs:
        res = run(root, timeout=0.3, custom={"hang": "60"}, context={"test": test})
        # the chain went on without waiting for the hung hook: it is still hanging
        assert "late" not in _seen(test)
        # released, it finishes: its edit and its result must not reach the chain, and its
        # thread must not go on with the hooks after it
        sys.modules["vmw_fake_hooks"].GATES[test].set()
        runs_ended()
    assert _seen(test)[-1] == "late"
    assert [(s.name, s.rc, s.timed_out) for s in res.scripts] == [
        ("10_a", 0, False),
        ("20_hang", 1, True),
        ("30_see", 0, False),
    ]
    hang = res.scripts[1]
    assert hang.stderr_tail == "did not return within 0.3s"
    assert not hang.changed_xml and hang.discarded is None
    assert hang.duration_ms >= 250  # what it ran for: up to the timeout
    seen_by_30, late = _seen(test)  # 30_see ran once, on the payload 10_a left
    assert late == "late"
    assert seen_by_30 == "see <domain><name>web-1</name><uuid>u-1</uuid><devices/><a/></domain>"
    dom = etree.fromstring(res.payload)
    assert dom.findtext("name") == "web-1" and dom.find("late") is None
    assert [c.tag for c in dom] == ["name", "uuid", "devices", "a", "b"]
    assert res.failed and not res.stopped
    assert [(e["event"], e["name"]) for e in logs if e["event"].startswith("hook.")] == [
        ("hook.ran", "10_a"),
        ("hook.timed_out", "20_hang"),
        ("hook.ran", "30_see"),
    ]


def test_script_after_a_timed_out_hook_reads_the_last_good_payload(root: Path, site) -> None:
    site(
        "before_vm_start:10_a = vmw_fake_hooks:add_a",
        "before_vm_start:20_hang = vmw_fake_hooks:hang_then_edit",
        "before_vm_start:40_see = vmw_fake_hooks:see",
    )
    script(
        root,
        "before_vm_start",
        "30_check",
        """
        grep -q "<a/>" "$_hook_domxml" || exit 1
        grep -q late "$_hook_domxml" && exit 1
        sed -i "s/web-1/web-3/" "$_hook_domxml"
        """,
    )
    test = "hang-then-script"
    res = run(root, timeout=0.3, custom={"hang": "1.0"}, context={"test": test})
    assert [(s.name, s.kind, s.rc, s.timed_out) for s in res.scripts] == [
        ("10_a", "inproc", 0, False),
        ("20_hang", "inproc", 1, True),
        ("30_check", "script", 0, False),
        ("40_see", "inproc", 0, False),
    ]
    assert _seen(test, until="late") == [
        "see <domain><name>web-3</name><uuid>u-1</uuid><devices/><a/></domain>",
        "late",
    ]
    assert etree.fromstring(res.payload).findtext("name") == "web-3"


def test_rc2_in_a_run_of_inproc_hooks_stops_the_rest(root: Path, site) -> None:
    site(
        "before_vm_start:10_a = vmw_fake_hooks:add_a",
        "before_vm_start:20_stop = vmw_fake_hooks:stop",
        "before_vm_start:30_see = vmw_fake_hooks:see",
    )
    res = run(root, context={"test": "rc2-run"})
    assert res.stopped and [(s.name, s.rc) for s in res.scripts] == [("10_a", 0), ("20_stop", 2)]
    assert _seen("rc2-run") == []
    assert etree.fromstring(res.payload).find("a") is not None


def test_each_inproc_hook_gets_its_own_copy_of_the_last_good_payload(root: Path, site) -> None:
    site(
        "before_vm_start:10_crash = vmw_fake_hooks:edit_then_crash",
        "before_vm_start:20_see = vmw_fake_hooks:see",
        "before_vm_start:30_see = vmw_fake_hooks:see",
    )
    res = run(root, context={"test": "copies"})
    assert [s.rc for s in res.scripts] == [1, 0, 0]
    assert _seen("copies") == [
        f"see {DOMXML}",
        "see <domain><name>web-1</name><uuid>u-1</uuid><devices/><b/></domain>",
    ]


def test_inproc_only_chain_writes_no_payload_file(
    root: Path, site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    site("before_vm_start:10_ls = vmw_fake_hooks:list_tmp")
    script(root, "after_vm_start", "10_ls", 'ls "$(dirname "$_hook_domxml")" >&2\n')
    res = run(root, context={"test": "no-file"})
    assert res.scripts[0].rc == 0 and _seen("no-file") == [[]]
    # a chain with a script does write one there (so the check above can see it)
    res = run(root, "after_vm_start")
    assert res.scripts[0].stderr_tail.startswith("vmworker-after_vm_start-")
    assert list(tmp.iterdir()) == []


def test_hook_ran_lines_carry_the_callers_context(root: Path, site) -> None:
    site(
        "before_vm_start:10_a = vmw_fake_hooks:add_a",
        "before_vm_start:20_a = vmw_fake_hooks:add_a",
    )
    structlog.contextvars.bind_contextvars(request_id="r-42")
    try:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            run(root)
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    ran = [e for e in logs if e["event"] == "hook.ran"]
    assert [(e["name"], e["request_id"], e["point"], e["vm_id"]) for e in ran] == [
        ("10_a", "r-42", "before_vm_start", "u-1"),
        ("20_a", "r-42", "before_vm_start", "u-1"),
    ]
