"""Refusal of insecure hooks, and custom properties reaching scripts safely."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.support import write_hook
from worker.hooks import CustomPropertyError, HookEngine, validate_custom

DOMXML = "<domain><name>web-1</name><uuid>u-1</uuid></domain>"


def hook(root: Path, point: str, name: str, body: str, mode: int = 0o755) -> Path:
    return write_hook(root, point, name, "#!/bin/sh\n" + textwrap.dedent(body).lstrip(), mode)


def run(root: Path, point: str = "before_vm_start", **kw):
    return HookEngine(root, inproc=False).run_chain(point, DOMXML, vm_id="u-1", **kw)


def test_world_writable_script_is_refused(root: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    hook(root, "before_vm_start", "10_open", f'touch "{ran}"', 0o757)
    hook(root, "before_vm_start", "20_fine", "exit 0")

    res = run(root)

    refused, fine = res.scripts
    assert not ran.exists()
    assert refused.rc == 1 and refused.refused and "world-writable" in refused.refused
    assert refused.stderr_tail == refused.refused
    assert fine.rc == 0 and fine.refused is None
    assert res.failed  # a before chain with a refused script fails closed


def test_group_writable_script_is_refused(root: Path) -> None:
    hook(root, "before_vm_start", "10_grp", "exit 0", 0o775)
    res = run(root)
    assert "group-writable" in (res.scripts[0].refused or "")


def test_group_writable_hook_dir_refuses_chain(root: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    hook(root, "before_vm_start", "10_a", f'touch "{ran}"')
    hook(root, "before_vm_start", "20_b", f'touch "{ran}"')
    (root / "before_vm_start").chmod(0o775)

    res = run(root)

    assert not ran.exists()
    assert [s.rc for s in res.scripts] == [1, 1] and res.failed
    assert all("hook directory is group-writable" in (s.refused or "") for s in res.scripts)


def test_world_writable_hooks_root_refuses_chain(root: Path) -> None:
    hook(root, "after_vm_start", "10_a", "exit 0")
    root.chmod(0o777)
    res = run(root, "after_vm_start")
    assert "hooks root is world-writable" in (res.scripts[0].refused or "")


def test_symlink_is_judged_by_its_target(root: Path, tmp_path: Path) -> None:
    target = tmp_path / "shared" / "hook"
    target.parent.mkdir()
    target.write_text("#!/bin/sh\nexit 0\n")
    target.chmod(0o777)
    (root / "before_vm_start").mkdir()
    (root / "before_vm_start").chmod(0o755)
    (root / "before_vm_start" / "10_link").symlink_to(target)
    res = run(root)
    assert "world-writable" in (res.scripts[0].refused or "")


def test_directories_above_the_root_are_not_checked(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    root = loose / "hooks"
    root.mkdir()
    root.chmod(0o755)
    hook(root, "before_vm_start", "10_ok", "exit 0")
    res = run(root)
    assert res.scripts[0].rc == 0 and res.scripts[0].refused is None


def test_refused_scripts_are_in_the_inventory(root: Path) -> None:
    hook(root, "before_vm_start", "10_open", "exit 0", 0o777)
    hook(root, "after_vm_start", "10_ok", "exit 0")
    inv = HookEngine(root, inproc=False).inventory()
    assert set(inv) == {"before_vm_start", "after_vm_start"}
    (entry,) = inv["before_vm_start"]
    assert entry["kind"] == "script" and "world-writable" in entry["refused"]
    assert len(entry["sha256"]) == 64
    assert inv["after_vm_start"][0]["refused"] is None


def test_custom_properties_reach_the_script(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    hook(
        root,
        "before_vm_start",
        "10_env",
        f'printf "%s|%s|%s" "$nestedvt" "$sap_agent" "$vmId" > "{out}"',
    )
    res = run(root, custom={"nestedvt": "true", "sap_agent": "a b;$(x)"})
    assert not res.failed
    assert out.read_text() == "true|a b;$(x)|u-1"


@pytest.mark.parametrize(
    "name",
    [
        "PATH",
        "HOME",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "_hook_domxml",
        "_hook_json",
        "_hook_error",
        "vmId",
        "BASH_ENV",
        "ENV",
        "IFS",
        "VMWORKER_BROKER",
        "1abc",
        "a-b",
        "a.b",
        "a b",
        "",
        "x=y",
        "é",
    ],
)
def test_hostile_custom_names_rejected(name: str) -> None:
    with pytest.raises(CustomPropertyError) as exc:
        validate_custom({name: "v"})
    assert repr(name) in str(exc.value)
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize("value", ["a\0b", 1, None, "\udcff"])
def test_bad_custom_values_rejected(value: object) -> None:
    with pytest.raises(CustomPropertyError, match="'k'"):
        validate_custom({"k": value})  # type: ignore[dict-item]


def test_ordinary_custom_properties_pass() -> None:
    validate_custom({"nestedvt": "true", "_private": "", "Ld_x": "1", "path_x": "é"})


def test_run_chain_rejects_bad_custom_before_running(root: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    hook(root, "before_vm_start", "10_a", f'touch "{ran}"')
    with pytest.raises(CustomPropertyError):
        run(root, custom={"LD_PRELOAD": "/tmp/evil.so"})
    assert not ran.exists()


def test_worker_env_hook_vars_do_not_leak(root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("_hook_json", "/etc/passwd")
    out = tmp_path / "out"
    hook(root, "before_vm_start", "10_env", f'echo "${{_hook_json:-unset}}" > "{out}"')
    run(root)
    assert out.read_text().strip() == "unset"
