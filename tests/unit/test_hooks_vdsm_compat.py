"""The `vdsm` package hook scripts see: VDSM's hooking and small helpers, nothing more."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import write_hook
from worker.hooks import HookEngine
from worker.hooks.engine import HOOKLIB

VM = "6f1c1f2e-8d4b-4d0e-9a57-2f6f4f0b9a11"
DOMXML = f"<domain type='kvm'><name>web-1</name><uuid>{VM}</uuid><devices/></domain>"


def hook(root: Path, point: str, name: str, body: str) -> Path:
    return write_hook(root, point, name, f"#!{sys.executable}\n" + textwrap.dedent(body).lstrip())


def in_script(code: str, **env: str) -> dict:
    """What `code` (printing one JSON value) gives where a hook script runs: HOOKLIB on
    PYTHONPATH, a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "PYTHONPATH": str(HOOKLIB), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("prewarm", [False, True])
def test_vdsm_hook_hooking_is_vmworkers_hooking(root: Path, prewarm: bool) -> None:
    hook(
        root,
        "before_vm_start",
        "50_vdsm_style",
        """
        import sys
        from vdsm.hook import hooking
        assert hooking is sys.modules["hooking"]
        doc = hooking.read_domxml()
        doc.documentElement.appendChild(doc.createElement("seclabel"))
        hooking.write_domxml(doc)
        """,
    )
    engine = HookEngine(root, inproc=False, prewarm=prewarm)
    try:
        res = engine.run_chain("before_vm_start", DOMXML, vm_id=VM)
    finally:
        engine.close()
    assert not res.failed, res.failure_stderr()
    assert "<seclabel/>" in res.payload


def test_vdsm_helpers_have_vdsms_values() -> None:
    got = in_script(
        """
        import json
        from vdsm.common import cpuarch, units, constants, conv, commands
        from vdsm import config as old_config, constants as old_constants
        from vdsm.config import config
        import hooking
        print(json.dumps({
            "units": [units.KiB, units.MiB, units.GiB, units.TiB, units.PiB],
            "real": cpuarch.real(), "effective": cpuarch.effective(),
            "is_x86": cpuarch.is_x86(cpuarch.X86_64), "is_ppc": cpuarch.is_ppc("ppc64le"),
            "ssl": config.getboolean("vars", "ssl"),
            "fake_kvm_support": config.getboolean("vars", "fake_kvm_support"),
            "fake_kvm_architecture": config.get("vars", "fake_kvm_architecture"),
            "same_config": old_config.config is config,
            "run": constants.P_VDSM_RUN, "sysconf": old_constants.SYSCONF_PATH,
            "hooks": constants.P_VDSM_HOOKS,
            "helpers": [conv.tobool is hooking.tobool, commands.execCmd is hooking.execCmd],
        }))
        """
    )
    assert got == {
        "units": [1024, 1024**2, 1024**3, 1024**4, 1024**5],
        "real": platform.machine(),
        "effective": platform.machine(),
        "is_x86": True,
        "is_ppc": True,
        "ssl": True,
        "fake_kvm_support": False,
        "fake_kvm_architecture": "x86_64",
        "same_config": True,
        "run": "/run/vdsm/",
        "sysconf": "/etc",
        "hooks": "/usr/libexec/vdsm/hooks/",
        "helpers": [True, True],
    }


def test_vdsm_config_reads_vdsm_conf_then_drop_ins_by_file_name(tmp_path: Path) -> None:
    etc, run, lib = tmp_path / "etc", tmp_path / "run", tmp_path / "lib"
    for base in (etc, run, lib):
        (base / "vdsm" / "vdsm.conf.d").mkdir(parents=True)
    (etc / "vdsm" / "vdsm.conf").write_text("[vars]\nfake_kvm_support = true\nssl = false\n")
    (lib / "vdsm" / "vdsm.conf.d" / "10-vendor.conf").write_text("[vars]\nssl = true\n")
    (run / "vdsm" / "vdsm.conf.d" / "50-admin.conf").write_text("[vars]\nfake_kvm_memory = 8\n")
    (etc / "vdsm" / "vdsm.conf.d" / "20-site.conf").write_text("[vars]\nfake_kvm_memory = 4\n")
    got = in_script(
        f"""
        import json
        from vdsm.common import config as c
        c._SYSCONFDIR = {str(etc)!r}
        c._DROPIN_BASES = ({str(lib)!r}, {str(run)!r}, {str(etc)!r})
        cfg = c.load("vdsm")
        print(json.dumps([cfg.get("vars", k) for k in
                          ("fake_kvm_support", "ssl", "fake_kvm_memory", "host_mem_reserve")]))
        """
    )
    # the file, then every drop-in sorted by name wherever it is: 10-vendor, 20-site, 50-admin
    assert got == ["true", "true", "8", "256"]


def test_nested_virtualization_reads_the_kvm_modules_parameter(tmp_path: Path) -> None:
    intel = tmp_path / "module" / "kvm_intel" / "parameters"
    intel.mkdir(parents=True)
    code = f"""
        import json
        from vdsm import osinfo
        print(json.dumps(osinfo.nested_virtualization(sysfs={str(tmp_path)!r})))
        """
    assert in_script(code) == [False, None]
    (intel / "nested").write_text("N\n")
    assert in_script(code) == [False, None]
    (intel / "nested").write_text("Y\n")
    assert in_script(code) == [True, "kvm_intel"]


def test_link_detect_type_tells_loopback(tmp_path: Path) -> None:
    code = """
        import json
        from vdsm.network.ipwrapper import Link, LinkType
        print(json.dumps([Link._detectType("lo"), LinkType.BRIDGE, LinkType.OVS]))
        """
    assert in_script(code) == ["loopback", "bridge", "openvswitch"]


def test_utils_closing_raises_a_failing_close_only_when_the_block_did_not_raise() -> None:
    got = in_script(
        """
        import json
        from vdsm import utils
        class C:
            def close(self): raise OSError("close failed")
        out = []
        try:
            with utils.closing(C()):
                pass
        except OSError as e:
            out.append(str(e))
        try:
            with utils.closing(C()):
                raise KeyError("body")
        except KeyError as e:
            out.append(str(e))
        print(json.dumps(out))
        """
    )
    assert got == ["close failed", "'body'"]


@pytest.mark.parametrize(
    ("module", "says"),
    [
        ("vdsm.client", "vdsm.client needs VDSM's own daemon (vdsmd)"),
        ("vdsm.network.netinfo", "vdsm.network.netinfo is part of VDSM itself"),
        ("vdsm.storage.qemuimg", "vdsm.storage is part of VDSM itself"),
    ],
)
def test_a_part_of_vdsm_not_provided_fails_the_hook_naming_it(
    root: Path, module: str, says: str
) -> None:
    hook(root, "before_vm_start", "50_needs_vdsm", f"import hooking\nimport {module}\n")
    res = HookEngine(root, inproc=False).run_chain("before_vm_start", DOMXML, vm_id=VM)
    (step,) = res.scripts
    assert step.rc == 1
    assert says in step.stderr_tail


def test_the_worker_itself_never_sees_the_vdsm_package() -> None:
    import worker.hooks.engine  # noqa: F401  (the engine is loaded, its scripts' path is not)

    assert str(HOOKLIB) not in sys.path
    assert "vdsm" not in sys.modules
    with pytest.raises(ImportError):
        __import__("vdsm")


@pytest.mark.parametrize("prewarm", [False, True])
def test_launch_flags_are_a_file_per_vm_under_the_state_dir(
    root: Path, tmp_path: Path, prewarm: bool
) -> None:
    hook(
        root,
        "before_device_create",
        "50_pause",
        """
        import os, hooking
        vm = os.environ["vmId"]
        flags = hooking.load_vm_launch_flags_from_file(vm)
        hooking.log(f"before: {flags}")
        hooking.dump_vm_launch_flags_to_file(vm, flags | 1)
        hooking.log(f"after: {hooking.load_vm_launch_flags_from_file(vm)}")
        """,
    )
    state = tmp_path / "state"
    engine = HookEngine(root, inproc=False, prewarm=prewarm, state_dir=state)
    try:
        first = engine.run_chain("before_device_create", "<interface/>", vm_id=VM)
        again = engine.run_chain("before_device_create", "<interface/>", vm_id=VM)
    finally:
        engine.close()
    assert "before: 0" in first.scripts[0].stderr_tail
    assert "after: 1" in first.scripts[0].stderr_tail
    assert "before: 1" in again.scripts[0].stderr_tail
    assert (state / VM / "launchflags").read_text() == "1"


def test_without_a_state_dir_launch_flags_read_0_and_cannot_be_saved(root: Path) -> None:
    hook(
        root,
        "before_device_create",
        "50_pause",
        """
        import os, hooking
        hooking.log(f"flags: {hooking.load_vm_launch_flags_from_file(os.environ['vmId'])}")
        hooking.dump_vm_launch_flags_to_file(os.environ["vmId"], 1)
        """,
    )
    res = HookEngine(root, inproc=False).run_chain("before_device_create", "<interface/>", vm_id=VM)
    (step,) = res.scripts
    assert "flags: 0" in step.stderr_tail
    assert step.rc == 1 and "_hook_state_dir is not set" in step.stderr_tail
