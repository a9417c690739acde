"""The hook chain with real scripts in a tmp_path hooks root."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from lxml import etree
from structlog.testing import capture_logs

from tests.support import wait_for, write_hook
from worker.hooks import POINTS, ChainResult, HookEngine, ScriptResult
from worker.hooks.points import ALIASES, BASE_POINTS, HOST_POINTS, REPORT_ONLY

DOMXML = (
    "<domain type='kvm'><name>web-1</name>"
    "<uuid>6f1c1f2e-8d4b-4d0e-9a57-2f6f4f0b9a11</uuid><devices/></domain>"
)
VM = "6f1c1f2e-8d4b-4d0e-9a57-2f6f4f0b9a11"


def hook(root: Path, point: str, name: str, body: str, mode: int = 0o755) -> Path:
    return write_hook(root, point, name, textwrap.dedent(body).lstrip(), mode)


def sh(body: str) -> str:
    return "#!/bin/sh\n" + textwrap.dedent(body).lstrip()


def py(body: str) -> str:
    return f"#!{sys.executable}\n" + textwrap.dedent(body).lstrip()


def run(root: Path, point: str = "before_vm_start", payload: str = DOMXML, **kw) -> ChainResult:
    engine_kw = {k: kw.pop(k) for k in ("timeout", "output_limit") if k in kw}
    return HookEngine(root, inproc=False, **engine_kw).run_chain(point, payload, vm_id=VM, **kw)


def test_scripts_run_in_name_order(root: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    for name in ("50_c", "10_a", "2_b"):
        hook(root, "before_vm_start", name, sh(f'echo {name} >> "{trace}"'))
    hook(root, "before_vm_start", ".hidden", sh(f'echo hidden >> "{trace}"'))
    hook(root, "before_vm_start", "30_not_executable", sh(f'echo noexec >> "{trace}"'), 0o644)
    (root / "before_vm_start" / "40_subdir").mkdir()
    target = hook(root, "after_vm_start", "real", sh(f'echo linked >> "{trace}"'))
    (root / "before_vm_start" / "45_link").symlink_to(target)

    res = run(root)

    assert trace.read_text().split() == ["10_a", "2_b", "linked", "50_c"]
    assert [s.name for s in res.scripts] == ["10_a", "2_b", "45_link", "50_c"]
    assert not res.failed and not res.stopped and res.payload == DOMXML


def test_each_script_sees_the_previous_edit(root: Path) -> None:
    hook(root, "before_vm_start", "10_rename", sh('sed -i "s/web-1/web-2/" "$_hook_domxml"'))
    hook(root, "before_vm_start", "20_check", sh('grep -q web-2 "$_hook_domxml" || exit 1'))

    res = run(root)

    assert not res.failed
    assert [s.changed_xml for s in res.scripts] == [True, False]
    assert etree.fromstring(res.payload).findtext("name") == "web-2"


def test_payload_file_is_deleted_after_the_chain(root: Path, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    hook(root, "before_vm_start", "10_where", sh(f'echo "$_hook_domxml" > "{seen}"'))
    run(root)
    path = Path(seen.read_text().strip())
    assert path.name.startswith("vmworker-before_vm_start-")
    assert not path.exists()


def test_a_payload_dir_is_made_private_emptied_of_leftovers_and_used(
    root: Path, tmp_path: Path
) -> None:
    payloads, seen = tmp_path / "state" / "payload", tmp_path / "seen"
    payloads.mkdir(parents=True)
    left = payloads / "vmworker-before_vm_start-k1ll3d.xml"  # a killed worker's chain
    left.write_text(DOMXML)
    other = payloads / "notes.txt"  # not a payload file: not ours to remove
    other.write_text("x")
    hook(root, "before_vm_start", "10_where", sh(f'echo "$_hook_domxml" > "{seen}"'))

    engine = HookEngine(root, inproc=False, payload_dir=payloads)
    assert not left.exists() and other.exists()
    assert payloads.stat().st_mode & 0o777 == 0o700  # payloads are the domain's XML
    engine.run_chain("before_vm_start", DOMXML, vm_id=VM)

    used = Path(seen.read_text().strip())
    assert used.parent == payloads and used.name.startswith("vmworker-before_vm_start-")
    assert sorted(p.name for p in payloads.iterdir()) == ["notes.txt"]  # deleted after it


def test_rc1_goes_on_and_fails_chain(root: Path) -> None:
    hook(root, "before_vm_start", "10_fail", sh("echo broken >&2; exit 1"))
    hook(root, "before_vm_start", "20_ok", sh("exit 0"))

    res = run(root)

    assert [s.rc for s in res.scripts] == [1, 0]
    assert res.failed and not res.stopped
    assert res.first_failure is not None and res.first_failure.name == "10_fail"


def test_rc2_stops_the_chain(root: Path) -> None:
    hook(root, "before_vm_start", "10_stop", sh("echo no way >&2; exit 2"))
    hook(root, "before_vm_start", "20_never", sh("exit 0"))

    res = run(root)

    assert [s.name for s in res.scripts] == ["10_stop"]
    assert res.failed and res.stopped


def test_rc5_is_unexpected_and_treated_as_1(root: Path) -> None:
    hook(root, "before_vm_start", "10_odd", sh("exit 5"))
    hook(root, "before_vm_start", "20_ok", sh("exit 0"))

    with capture_logs() as logs:
        res = run(root)

    assert [s.rc for s in res.scripts] == [5, 0]
    assert res.failed and not res.stopped
    assert res.scripts[0].unexpected_rc
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [(e["event"], e["name"], e["rc"]) for e in warnings] == [
        ("hook.unexpected_rc", "10_odd", 5)
    ]
    assert any(e["event"] == "hook.ran" and e["name"] == "20_ok" for e in logs)


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie nobody reaped yet is dead


# A hook that sleeps 60 s in a test given 30: only the engine's timeout can end it in time.
@pytest.mark.timeout(30)
def test_timeout_kills_the_process_group(root: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    hook(
        root,
        "before_vm_start",
        "10_hang",
        sh(f"""
        sleep 60 &
        echo $! > "{pidfile}"
        echo started
        wait
        """),
    )
    hook(root, "before_vm_start", "20_after", sh("exit 0"))

    res = run(root, timeout=0.5)

    hung = res.scripts[0]
    assert hung.timed_out and hung.rc != 0 and "started" in hung.stdout_tail
    assert res.failed and [s.name for s in res.scripts] == ["10_hang", "20_after"]
    child = int(pidfile.read_text())
    wait_for(lambda: _gone(child), 10, "the hook's child to be killed")


@pytest.mark.timeout(30)  # the script sleeps 60 s
def test_script_closing_its_output_still_times_out(root: Path) -> None:
    hook(root, "before_vm_start", "10_quiet", sh("exec >&- 2>&-\nsleep 60"))
    res = run(root, timeout=0.3)
    assert res.scripts[0].timed_out and res.failed


def test_leftover_child_holding_output_does_not_block_the_chain(root: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    hook(root, "before_vm_start", "10_bg", sh(f'sleep 30 &\necho $! > "{pidfile}"\nexit 0'))
    try:
        res = run(root, timeout=10.0)
        assert res.scripts[0].rc == 0 and not res.scripts[0].timed_out
        # the chain returned while the child still holds the script's output open
        assert not _gone(int(pidfile.read_text()))
    finally:
        os.kill(int(pidfile.read_text()), 9)


def test_nonzero_edit_is_discarded(root: Path) -> None:
    hook(
        root,
        "before_vm_start",
        "10_edit_then_fail",
        sh('sed -i "s/web-1/evil/" "$_hook_domxml"; exit 1'),
    )
    hook(root, "before_vm_start", "20_sees_original", sh('grep -q web-1 "$_hook_domxml"'))

    res = run(root)

    bad, after = res.scripts
    assert bad.discarded == "exited 1" and not bad.changed_xml
    assert after.rc == 0
    assert res.payload == DOMXML


def test_invalid_xml_edit_is_discarded(root: Path) -> None:
    hook(root, "before_vm_start", "10_good", sh('sed -i "s/web-1/web-2/" "$_hook_domxml"'))
    hook(root, "before_vm_start", "20_garbage", sh('echo "<domain><unclosed>" > "$_hook_domxml"'))
    hook(root, "before_vm_start", "30_sees_last_good", sh('grep -q web-2 "$_hook_domxml"'))

    res = run(root)

    good, garbage, last = res.scripts
    assert good.changed_xml
    assert garbage.rc == 0 and garbage.discarded and garbage.discarded.startswith("invalid XML")
    assert last.rc == 0
    assert not res.failed
    assert etree.fromstring(res.payload).findtext("name") == "web-2"


def test_removed_payload_file_is_restored(root: Path) -> None:
    hook(root, "before_vm_start", "10_rm", sh('rm -f "$_hook_domxml"'))
    hook(root, "before_vm_start", "20_check", sh('grep -q web-1 "$_hook_domxml"'))
    res = run(root)
    assert res.scripts[0].discarded and res.scripts[1].rc == 0
    assert res.payload == DOMXML


def test_rewrite_with_the_same_meaning_is_not_a_change(root: Path) -> None:
    hook(
        root,
        "before_vm_start",
        "10_roundtrip",
        py("""
        import hooking
        hooking.write_domxml(hooking.read_domxml())
        """),
    )
    res = run(root)
    assert res.scripts[0].rc == 0 and not res.scripts[0].changed_xml
    assert res.payload == DOMXML


def test_final_payload_has_no_xml_declaration(root: Path) -> None:
    hook(
        root,
        "before_vm_start",
        "10_minidom_edit",
        py("""
        import hooking
        doc = hooking.read_domxml()
        doc.getElementsByTagName("name")[0].firstChild.data = "caf\\u00e9"
        hooking.write_domxml(doc)
        """),
    )
    res = run(root)
    assert res.scripts[0].changed_xml
    assert not res.payload.startswith("<?xml")
    assert etree.fromstring(res.payload).findtext("name") == "caf\u00e9"


def test_json_point_gets_hook_json_and_invalid_json_is_discarded(root: Path) -> None:
    hook(
        root,
        "before_vmworker_start",
        "10_add",
        py("""
        import hooking
        data = hooking.read_json()
        data["added"] = True
        hooking.write_json(data)
        """),
    )
    hook(root, "before_vmworker_start", "20_break", sh('echo "{nope" > "$_hook_json"'))

    res = run(root, "before_vmworker_start", json.dumps({"host": "h1"}))

    assert [s.changed_xml for s in res.scripts] == [True, False]
    assert (res.scripts[1].discarded or "").startswith("invalid JSON")
    assert json.loads(res.payload) == {"host": "h1", "added": True}


def test_big_output_is_bounded(root: Path) -> None:
    hook(
        root,
        "before_vm_start",
        "10_loud",
        py("""
        import sys
        for i in range(2000):
            sys.stdout.write("o" * 1000 + "\\n")
            sys.stderr.write("e" * 1000 + "\\n")
        sys.stdout.write("END-OUT")
        sys.stderr.write("END-ERR")
        """),
    )
    res = run(root, output_limit=1024)
    s = res.scripts[0]
    assert s.rc == 0
    assert len(s.stdout_tail.encode()) <= 1024 and s.stdout_tail.endswith("END-OUT")
    assert len(s.stderr_tail.encode()) <= 1024 and s.stderr_tail.endswith("END-ERR")


def test_environment_has_vm_id_error_context_and_hooklib(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    hook(
        root,
        "after_vm_start_fail",
        "10_env",
        py(f"""
        import json, os, hooking
        json.dump(dict(os.environ, hooking=hooking.__file__), open({str(out)!r}, "w"))
        """),
    )
    res = run(
        root,
        "after_vm_start_fail",
        error="libvirt/internal: boom",
        context={"op": "start_vm", "request_id": "r-1", "host": "h1", "other": "x"},
    )
    assert not res.failed, res.failure_stderr()
    env = json.loads(out.read_text())
    assert env["vmId"] == VM
    assert env["_hook_error"] == "libvirt/internal: boom"
    assert env["_hook_point"] == "after_vm_start_fail"
    assert (env["_hook_op"], env["_hook_request_id"], env["_hook_host"]) == (
        "start_vm",
        "r-1",
        "h1",
    )
    assert "_hook_other" not in env and "_hook_json" not in env
    assert env["hooking"].endswith(os.path.join("worker", "hooklib", "hooking.py"))
    assert "" not in env["PYTHONPATH"].split(os.pathsep)


def test_missing_interpreter_counts_as_a_failure(root: Path) -> None:
    hook(root, "before_vm_start", "10_bad_shebang", "#!/nonexistent/interpreter\n")
    res = run(root)
    assert res.failed and res.scripts[0].rc == 1
    assert "cannot execute" in res.scripts[0].stderr_tail


@pytest.mark.parametrize("point", ["../etc", "before_vm_start/../x", "before_nothing", ""])
def test_bad_point_names_are_refused(root: Path, point: str) -> None:
    with pytest.raises(ValueError):
        run(root, point)


def test_empty_chain_returns_the_payload_untouched(root: Path) -> None:
    res = run(root)
    assert res.scripts == [] and res.payload == DOMXML and not res.failed


def test_failure_stderr_names_every_failing_script(root: Path) -> None:
    hook(root, "after_vm_start", "10_a", sh("echo first problem >&2; exit 1"))
    hook(root, "after_vm_start", "20_b", sh("exit 0"))
    hook(root, "after_vm_start", "30_c", sh("echo second problem >&2; exit 1"))
    res = run(root, "after_vm_start")
    text = res.failure_stderr()
    assert "[10_a: rc=1] first problem" in text
    assert "[30_c: rc=1] second problem" in text
    assert "20_b" not in text


def test_to_event_has_one_dict_per_script(root: Path) -> None:
    p = hook(
        root, "before_vm_start", "10_a", sh('echo hi; sed -i "s/web-1/web-2/" "$_hook_domxml"')
    )
    res = run(root)
    import hashlib

    (ev,) = res.to_event()
    assert set(ev) >= {
        "name",
        "rc",
        "duration_ms",
        "sha256",
        "changed_xml",
        "stderr_tail",
        "stdout_tail",
        "refused",
        "timed_out",
        "discarded",
    }
    assert ev["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert (ev["name"], ev["rc"], ev["changed_xml"], ev["stdout_tail"]) == ("10_a", 0, True, "hi\n")
    assert ev["refused"] is None and ev["discarded"] is None and ev["timed_out"] is False
    json.dumps(ev)


def test_every_base_point_has_before_after_and_fail_chains() -> None:
    for base, _, _ in BASE_POINTS:
        before = POINTS[f"before_{base}"]
        assert before.aborts == (before.name not in REPORT_ONLY)
        assert not POINTS[f"after_{base}"].aborts
        assert not POINTS[f"after_{base}_fail"].aborts
    assert not POINTS["before_device_destroy"].aborts  # a device hook cannot keep a VM alive
    assert POINTS["before_disk_hotplug"].payload == "devicexml"
    assert POINTS["before_device_migrate_destination"].payload == "devicexml"
    assert POINTS["before_vmworker_start"].env_var == "_hook_json"
    assert POINTS["before_vm_start"].env_var == "_hook_domxml"
    assert len(POINTS) == 3 * 25 + len(HOST_POINTS)


def test_host_points_are_single_chains_that_never_abort() -> None:
    for name, kind, _ in HOST_POINTS:
        assert POINTS[name].payload == kind == "json" and not POINTS[name].aborts
    assert {"after_get_caps", "before_vdsm_start", "after_vdsm_stop"} <= set(POINTS)
    assert "before_get_caps" not in POINTS and "after_vdsm_start" not in POINTS
    for alias in (a for aliases in ALIASES.values() for a in aliases):
        assert alias in POINTS


def test_scriptresult_is_reexported() -> None:
    assert ScriptResult.__name__ == "ScriptResult"


def test_restore_does_not_write_through_a_planted_symlink(root: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    hook(
        root,
        "before_vm_start",
        "10_plant",
        sh(f'rm "$_hook_domxml"; ln -s "{victim}" "$_hook_domxml"'),
    )
    hook(root, "before_vm_start", "20_check", sh('grep -q web-1 "$_hook_domxml"'))
    res = run(root)
    assert victim.read_text() == "precious"
    assert res.scripts[0].discarded and res.scripts[1].rc == 0 and res.payload == DOMXML


def test_a_directory_left_at_the_payload_path_is_replaced(root: Path) -> None:
    hook(root, "before_vm_start", "10_dir", sh('rm "$_hook_domxml"; mkdir "$_hook_domxml"'))
    hook(root, "before_vm_start", "20_check", sh('grep -q web-1 "$_hook_domxml"'))
    res = run(root)
    assert res.scripts[0].discarded and res.scripts[1].rc == 0 and res.payload == DOMXML


def test_script_after_a_refused_one_reads_the_payload(root: Path) -> None:
    hook(root, "before_vm_start", "10_loose", sh("exit 0"), 0o775)
    hook(root, "before_vm_start", "20_edit", sh('sed -i "s/web-1/web-2/" "$_hook_domxml"'))
    hook(root, "before_vm_start", "30_check", sh('grep -q web-2 "$_hook_domxml"'))
    res = run(root)
    assert [(s.name, s.rc, bool(s.refused)) for s in res.scripts] == [
        ("10_loose", 1, True),
        ("20_edit", 0, False),
        ("30_check", 0, False),
    ]
    assert etree.fromstring(res.payload).findtext("name") == "web-2"


def test_hook_lines_are_logged_in_run_order_with_point_and_vm(root: Path) -> None:
    hook(root, "after_vm_start", "10_a", sh("exit 0"))
    hook(root, "after_vm_start", "20_b", sh("exit 1"))
    with capture_logs() as logs:
        run(root, "after_vm_start")
    assert [(e["event"], e["name"], e["point"], e["vm_id"], e["rc"]) for e in logs] == [
        ("hook.ran", "10_a", "after_vm_start", VM, 0),
        ("hook.failed", "20_b", "after_vm_start", VM, 1),
    ]
