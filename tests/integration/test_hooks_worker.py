"""Hook chains through the real worker: RabbitMQ, libvirt, scripts in a hooks root."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
import uuid
from pathlib import Path

import libvirt
import pytest
from click.testing import CliRunner

from tests.support import QEMU_URI, REPO, small_vm, wait_for
from tests.support import write_hook as hook
from worker.journal import Journal

SHEBANG = f"#!{sys.executable}\n"


def sh(text: str) -> str:
    return "#!/bin/sh\n" + text + "\n"


def start(env, tap, vm, custom=None, timeout=30.0):  # type: ignore[no-untyped-def]
    rid = env.publish("start_vm", vm, custom=custom)
    return tap.wait_terminal(rid, timeout)["data"]


@pytest.fixture
def start_new(env, tap, test_domains):  # type: ignore[no-untyped-def]
    """start_new(custom=None, **spec) -> (vm, its start_vm's terminal event data): a new VM of
    `small_vm(**spec)` started through the worker, removed at the end."""

    def go(custom=None, **kw):  # type: ignore[no-untyped-def]
        vm = small_vm("h", **kw)
        test_domains.append(vm["uuid"])
        return vm, start(env, tap, vm, custom)

    return go


def names(d, point):  # type: ignore[no-untyped-def]
    return [h["name"] for h in d["hooks"] if h["point"] == point]


def test_seed_vm_channels_hook_adds_its_channels_to_a_real_qemu_domain(
    env, tap, start_worker, qemu_domains, hooks_root
):
    # the hook exactly as the seed article prints it, only with a python3 shebang
    seed = (REPO / "tests" / "data" / "seed_50_vm_channels").read_text()
    hook(hooks_root, "before_vm_start", "50_vm_channels", seed)
    env.libvirt_uri = QEMU_URI
    start_worker()
    vm = small_vm("chan")
    qemu_domains.append(vm["uuid"])
    d = start(env, tap, vm, timeout=60)
    assert d["phase"] == "after", d.get("error")
    (h,) = [h for h in d["hooks"] if h["name"] == "50_vm_channels"]
    assert h["rc"] == 0 and h["changed_xml"] is True
    assert f"vm-uuid: {vm['uuid']}" in h["stderr_tail"]
    live = libvirt.open(QEMU_URI).lookupByUUIDString(vm["uuid"]).XMLDesc(0)
    for channel in ("tools-guest-agent.0", "ovirt-client-redirect.0"):
        assert f"{vm['uuid']}.{channel}" in live
    # hook edits are for this run: the persistent definition stays the spec
    inactive = (
        libvirt.open(QEMU_URI)
        .lookupByUUIDString(vm["uuid"])
        .XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    )
    assert "ovirt-client-redirect.0" not in inactive


def test_scripts_run_in_name_order_and_see_each_others_edits(
    env, tap, start_worker, start_new, hooks_root
):
    log = hooks_root.parent / "order.log"
    for name in ("20_b", "10_a", "30_c"):
        hook(
            hooks_root,
            "before_vm_start",
            name,
            sh(
                f"echo {name} >> {log}\n"
                f'sed -i "s|</description>|-{name}</description>|" "$_hook_domxml"'
            ),
        )
    start_worker()
    vm, d = start_new(description="x")
    assert d["phase"] == "after"
    assert log.read_text().split() == ["10_a", "20_b", "30_c"]
    assert names(d, "before_vm_start") == ["10_a", "20_b", "30_c"]
    xml = libvirt.open("test:///default").lookupByUUIDString(vm["uuid"]).XMLDesc(0)
    assert "<description>x-10_a-20_b-30_c</description>" in xml


def test_rc1_goes_on_and_fails_the_op_without_touching_libvirt(
    env, tap, start_worker, start_new, hooks_root
):
    hook(hooks_root, "before_vm_start", "10_bad", sh("echo 'no licence for this VM' >&2; exit 1"))
    hook(hooks_root, "before_vm_start", "20_next", sh("echo ran >&2"))
    hook(hooks_root, "after_vm_start_fail", "10_cleanup", sh('echo "cleanup: $_hook_error" >&2'))
    start_worker()
    vm, d = start_new()
    assert d["phase"] == "fail"
    err = d["error"]
    assert err["source"] == "hook" and err["hook"] == "10_bad"
    assert "no licence for this VM" in err["stderr"]
    assert names(d, "before_vm_start") == ["10_bad", "20_next"]
    (cleanup,) = [h for h in d["hooks"] if h["point"] == "after_vm_start_fail"]
    assert "cleanup: hook/hook_failed" in cleanup["stderr_tail"]
    with pytest.raises(libvirt.libvirtError):
        libvirt.open("test:///default").lookupByUUIDString(vm["uuid"])


def test_rc2_stops_the_chain_and_every_failing_stderr_is_kept(
    env, tap, start_worker, start_new, hooks_root
):
    hook(hooks_root, "before_vm_start", "10_warn", sh("echo first-problem >&2; exit 1"))
    hook(hooks_root, "before_vm_start", "20_stop", sh("echo second-problem >&2; exit 2"))
    hook(hooks_root, "before_vm_start", "30_never", sh("exit 0"))
    start_worker()
    _vm, d = start_new()
    assert d["phase"] == "fail"
    assert names(d, "before_vm_start") == ["10_warn", "20_stop"]
    assert "first-problem" in d["error"]["stderr"] and "second-problem" in d["error"]["stderr"]


def test_rc5_is_reported_unexpected_and_treated_as_1(env, tap, start_worker, start_new, hooks_root):
    hook(hooks_root, "after_vm_start", "10_odd", sh("exit 5"))
    hook(hooks_root, "after_vm_start", "20_next", sh("exit 0"))
    start_worker()
    _vm, d = start_new()
    assert d["phase"] == "after"  # after-chains only report
    odd = next(h for h in d["hooks"] if h["name"] == "10_odd")
    assert odd["rc"] == 5 and odd["unexpected_rc"] is True
    assert names(d, "after_vm_start") == ["10_odd", "20_next"]


def test_hanging_hook_is_killed_with_its_children_and_the_op_fails_in_about_the_timeout(
    env, tap, start_worker, test_domains, hooks_root, tmp_path
):
    pidfile = tmp_path / "child.pid"
    hook(hooks_root, "before_vm_start", "10_hang", sh(f"sleep 300 & echo $! > {pidfile}; wait"))
    start_worker(hook_timeout=2)
    vm = small_vm("h")
    test_domains.append(vm["uuid"])
    t0 = time.monotonic()
    d = start(env, tap, vm)
    elapsed = time.monotonic() - t0
    assert d["phase"] == "fail" and d["error"]["source"] == "hook"
    (h,) = [h for h in d["hooks"] if h["name"] == "10_hang"]
    assert h["timed_out"] is True
    assert 1.5 < elapsed < 8
    child = int(pidfile.read_text())
    wait_for(lambda: _gone(child), 10, "the hook's child to be killed")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_edit_of_a_failing_script_and_invalid_xml_are_discarded(
    env, tap, start_worker, start_new, hooks_root
):
    hook(
        hooks_root,
        "before_vm_start",
        "10_bad_edit",
        sh('sed -i "s|</devices>|<!-- bad-edit --></devices>|" "$_hook_domxml"; exit 1'),
    )
    hook(hooks_root, "before_vm_start", "20_garbage", sh('echo "<domain><oops" > "$_hook_domxml"'))
    hook(
        hooks_root,
        "before_vm_start",
        "30_good",
        sh('sed -i "s|</devices>|<!-- good-edit --></devices>|" "$_hook_domxml"'),
    )
    hook(hooks_root, "after_vm_start_fail", "10_see", sh('cat "$_hook_domxml" >&2'))
    start_worker()
    _vm, d = start_new()
    assert d["phase"] == "fail"  # 10_bad_edit exited 1
    by = {h["name"]: h for h in d["hooks"]}
    assert by["10_bad_edit"]["discarded"] and not by["10_bad_edit"]["changed_xml"]
    assert by["20_garbage"]["discarded"] and not by["20_garbage"]["changed_xml"]
    assert by["30_good"]["changed_xml"] is True
    seen = by["10_see"]["stderr_tail"]
    assert "good-edit" in seen and "bad-edit" not in seen and "<oops" not in seen


def test_world_writable_script_is_refused_and_the_chain_fails_closed(
    env, tap, start_worker, start_new, hooks_root, tmp_path
):
    marker = tmp_path / "ran"
    p = hook(hooks_root, "before_vm_start", "10_open", sh(f"touch {marker}"))
    p.chmod(0o777)
    start_worker()
    _vm, d = start_new()
    assert d["phase"] == "fail" and d["error"]["hook"] == "10_open"
    (h,) = d["hooks"][:1]
    assert h["refused"] and "writable" in h["refused"]
    assert not marker.exists()
    assert stat.S_IMODE(p.stat().st_mode) == 0o777


def test_custom_properties_reach_the_script(env, tap, start_worker, start_new, hooks_root):
    hook(hooks_root, "before_vm_start", "10_env", sh('echo "color=$color vmId=$vmId" >&2'))
    start_worker()
    vm, d = start_new(custom={"color": "blue"})
    assert f"color=blue vmId={vm['uuid']}" in d["hooks"][0]["stderr_tail"]


# writes what it was given to $dump_dir/<point>-<attempt>.json, and who forked it
ENV_DUMP = """
import json, os
e = os.environ
out = os.path.join(e["dump_dir"], f"{e['_hook_point']}-{e['_hook_attempt']}.json")
hook_env = {k: v for k, v in e.items() if k.startswith("_hook_")}
json.dump({"env": hook_env, "ppid": os.getppid()}, open(out, "w"))
"""


@pytest.mark.parametrize("prewarm", [False, True], ids=["exec", "prewarm"])
def test_scripts_see_the_requests_correlation_id_and_attempt(
    env, tap, start_worker, test_domains, hooks_root, tmp_path, prewarm
):
    bindir = tmp_path / "bin"  # a plain `python3`: what the pre-warmed runner takes over
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    for point in ("before_vm_start", "after_vm_start"):
        hook(hooks_root, point, "10_env", f"#!{bindir}/python3\n{ENV_DUMP}")
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    custom = {"dump_dir": str(dumps)}
    first, again = small_vm("h"), small_vm("h")
    test_domains += [first["uuid"], again["uuid"]]
    # `again` was started by a worker that died in it: its redelivery is the second run
    rerun = str(uuid.uuid4())
    journal = Journal(env.state_dir / "journal.sqlite")
    journal.receive(rerun, "start_vm", again["uuid"])
    journal.start(rerun, None)
    journal.close()
    start_worker(hook_prewarm=prewarm)

    rid = env.publish("start_vm", first, custom=custom, correlation_id="order-42")
    assert tap.wait_terminal(rid)["data"]["phase"] == "after"
    env.publish("start_vm", again, custom=custom, request_id=rerun, correlation_id="order-43")
    d = tap.wait_terminal(rerun)["data"]
    assert d["phase"] == "after" and d["recovered"] is True

    for point in ("before_vm_start", "after_vm_start"):
        for request, correlation, attempt in ((rid, "order-42", 1), (rerun, "order-43", 2)):
            seen = json.loads((dumps / f"{point}-{attempt}.json").read_text())
            assert seen["env"]["_hook_request_id"] == request
            assert seen["env"]["_hook_correlation_id"] == correlation
            assert seen["env"]["_hook_attempt"] == str(attempt)
            assert seen["env"]["_hook_op"] == "start_vm"
            assert seen["env"]["_hook_host"] == env.host
            # pre-warmed: forked by its fork server, not started by the worker
            assert (seen["ppid"] == os.getpid()) is not prewarm


@pytest.mark.parametrize(
    "name", ["LD_PRELOAD", "PATH", "PYTHONPATH", "_hook_domxml", "1abc", "a-b", "HOME"]
)
def test_hostile_custom_property_names_are_a_validation_failure(
    env, tap, start_worker, hooks_root, tmp_path, name
):
    marker = tmp_path / "ran"
    hook(hooks_root, "before_vm_start", "10_any", sh(f"touch {marker}"))
    start_worker()
    d = start(env, tap, small_vm("h"), custom={name: "x"})
    assert d["phase"] == "fail" and d["error"]["source"] == "validation"
    assert name in d["error"]["message"]
    assert not marker.exists()


def test_fail_chain_runs_on_a_libvirt_failure(env, tap, start_worker, hooks_root):
    hook(hooks_root, "after_vm_pause_fail", "10_tell", sh('echo "got: $_hook_error" >&2'))
    start_worker()
    rid = env.publish("pause_vm", {"uuid": str(uuid.uuid4())})
    d = tap.wait_terminal(rid)["data"]
    assert d["phase"] == "fail" and d["error"]["code"] == "no_domain"
    (h,) = [h for h in d["hooks"] if h["point"] == "after_vm_pause_fail"]
    assert "got: libvirt/no_domain" in h["stderr_tail"]


def test_in_process_hook_runs_ordered_with_the_scripts(
    env, tap, start_worker, start_new, hooks_root, tmp_path, monkeypatch
):
    pkg = tmp_path / "site"
    (pkg / "vmw_test_inproc").mkdir(parents=True)
    (pkg / "vmw_test_inproc" / "__init__.py").write_text(
        "def tag(tree, ctx):\n"
        "    d = tree.getroot().find('description')\n"
        "    d.text += '-inproc:' + ctx.custom.get('who', '')\n"
    )
    dist = pkg / "vmw_test_inproc-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vmw-test-inproc\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[vmworker.hooks]\nbefore_vm_start:20_inproc = vmw_test_inproc:tag\n"
    )
    monkeypatch.syspath_prepend(str(pkg))
    hook(
        hooks_root,
        "before_vm_start",
        "10_script",
        sh('grep -q inproc "$_hook_domxml" && echo saw-inproc >&2; exit 0'),
    )
    hook(
        hooks_root,
        "before_vm_start",
        "30_script",
        sh('grep -q inproc "$_hook_domxml" && echo saw-inproc >&2; exit 0'),
    )
    start_worker()
    vm, d = start_new(description="x", custom={"who": "me"})
    assert d["phase"] == "after", d.get("error")
    assert names(d, "before_vm_start") == ["10_script", "20_inproc", "30_script"]
    by = {h["name"]: h for h in d["hooks"]}
    assert "saw-inproc" not in by["10_script"]["stderr_tail"]
    assert "saw-inproc" in by["30_script"]["stderr_tail"]
    live = libvirt.open("test:///default").lookupByUUIDString(vm["uuid"]).XMLDesc(0)
    assert "<description>x-inproc:me</description>" in live


def test_hooks_run_cli_prints_each_outcome_and_the_diff(hooks_root, tmp_path):
    from worker.cli import main

    hook(
        hooks_root,
        "before_vm_start",
        "10_edit",
        sh('sed -i "s|<name>a</name>|<name>b</name>|" "$_hook_domxml"'),
    )
    xml = tmp_path / "dom.xml"
    xml.write_text("<domain type='kvm'><name>a</name><devices/></domain>\n")
    res = CliRunner().invoke(
        main, ["hooks", "run", "before_vm_start", "--xml", str(xml), "--hooks", str(hooks_root)]
    )
    assert res.exit_code == 0, res.output
    assert "10_edit" in res.output
    assert (
        "-<domain type='kvm'><name>a</name><devices/></domain>" in res.output
        or "<name>a</name>" in res.output
    )
    assert "+" in res.output and "<name>b</name>" in res.output
    assert xml.read_text() == "<domain type='kvm'><name>a</name><devices/></domain>\n"


def test_shipped_hookdirs_are_safe_to_run(tmp_path):
    from worker.hooks import HookEngine

    inv = HookEngine(REPO / "hookdirs").inventory()
    refused = {p: [s for s in v if s.get("refused")] for p, v in inv.items()}
    assert not any(refused.values()), refused
    assert {s["name"] for s in inv["before_vm_start"]} >= {"50_vm_channels", "50_nestedvt"}
    assert os.access(REPO / "hookdirs" / "before_vm_start" / "50_vm_channels", os.X_OK)
