"""`vmworker hooks list` and `vmworker hooks run`, through click's CliRunner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support import write_hook
from worker.hooks.cli import REPO_HOOKDIRS, default_hooks_root, hooks

DOMXML = "<domain>\n  <name>web-1</name>\n  <uuid>u-1</uuid>\n</domain>\n"


def script(root: Path, point: str, name: str, body: str, mode: int = 0o755) -> Path:
    return write_hook(root, point, name, "#!/bin/sh\n" + body + "\n", mode)


@pytest.fixture
def xml_file(tmp_path: Path) -> Path:
    f = tmp_path / "dom.xml"
    f.write_text(DOMXML)
    return f


def test_hooks_run_cli_prints_diff(root: Path, xml_file: Path) -> None:
    script(root, "before_vm_start", "10_rename", 'sed -i "s/web-1/$newname/" "$_hook_domxml"')
    script(root, "before_vm_start", "20_talk", 'echo "vm is $vmId"; echo warn >&2')

    result = CliRunner().invoke(
        hooks,
        [
            *("run", "before_vm_start", "--xml", str(xml_file)),
            *("--custom", "newname=web-9", "--hooks", str(root)),
        ],
    )

    assert result.exit_code == 0, result.output
    out = result.output
    assert "10_rename: ok" in out and "changed payload" in out
    assert "20_talk: ok" in out and "| vm is u-1" in out and "| warn" in out
    assert "-  <name>web-1</name>" in out and "+  <name>web-9</name>" in out
    assert "chain ok" in out
    assert xml_file.read_text() == DOMXML  # a dry run works on a copy


def test_hooks_run_cli_exits_1_when_the_chain_fails(root: Path, xml_file: Path) -> None:
    script(root, "before_vm_start", "10_no", "echo denied >&2; exit 2")
    result = CliRunner().invoke(
        hooks, ["run", "before_vm_start", "--xml", str(xml_file), "--hooks", str(root)]
    )
    assert result.exit_code == 1
    assert "10_no: rc=2 (stop)" in result.output and "denied" in result.output
    assert "payload unchanged" in result.output
    assert "the operation would be aborted" in result.output


def test_hooks_run_cli_json_point_and_output(root: Path, tmp_path: Path) -> None:
    script(root, "after_vmworker_stop", "10_j", """sed -i 's/}/, "x": 1}/' "$_hook_json\"""")
    data, out = tmp_path / "in.json", tmp_path / "out.json"
    data.write_text('{"host": "h"}')
    result = CliRunner().invoke(
        hooks,
        ["run", "after_vmworker_stop", "--json", str(data), "-o", str(out), "--hooks", str(root)],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == {"host": "h", "x": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "../etc", "--xml", "X"], "invalid hook point"),
        (["run", "before_vm_start"], "give --xml FILE"),
        (["run", "before_vm_start", "--xml", "X", "--custom", "LD_PRELOAD=x"], "LD_PRELOAD"),
        (["run", "before_vm_start", "--xml", "X", "--custom", "novalue"], "not k=v"),
    ],
)
def test_hooks_run_cli_rejects_bad_input(
    root: Path, xml_file: Path, args: list[str], message: str
) -> None:
    args = [str(xml_file) if a == "X" else a for a in args] + ["--hooks", str(root)]
    result = CliRunner().invoke(hooks, args)
    assert result.exit_code == 2
    assert message in result.output


def test_hooks_list_shows_checksums_and_refusals(root: Path) -> None:
    script(root, "before_vm_start", "10_ok", "exit 0")
    script(root, "before_vm_start", "20_open", "exit 0", 0o777)
    (root / "before_get_caps").mkdir()

    result = CliRunner().invoke(hooks, ["list", "--hooks", str(root), "--no-inproc"])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "before_vm_start" in lines
    ok = next(line for line in lines if "10_ok" in line)
    assert len(ok.split()[1]) == 16
    bad = next(line for line in lines if "20_open" in line)
    assert "REFUSED: script is world-writable" in bad
    assert "unknown hook points): before_get_caps" in result.output


def test_hooks_list_json(root: Path) -> None:
    script(root, "after_vm_start", "10_ok", "exit 0")
    result = CliRunner().invoke(hooks, ["list", "--hooks", str(root), "--json", "--no-inproc"])
    inv = json.loads(result.output)
    assert [e["name"] for e in inv["after_vm_start"]] == ["10_ok"]


def test_default_hooks_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMWORKER_HOOKS_ROOT", str(tmp_path))
    assert default_hooks_root() == tmp_path
    monkeypatch.delenv("VMWORKER_HOOKS_ROOT")
    expected = Path("/etc/vmworker/hooks")
    assert default_hooks_root() == (expected if os.path.lexists(expected) else REPO_HOOKDIRS)


def test_a_broken_installed_root_is_not_replaced_by_the_repo_hooks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("VMWORKER_HOOKS_ROOT", raising=False)
    installed = tmp_path / "etc-hooks"
    monkeypatch.setattr("worker.config.INSTALLED_HOOKS", installed)
    assert default_hooks_root() == REPO_HOOKDIRS  # absent: a source checkout's hooks
    installed.write_text("not a directory\n")
    assert default_hooks_root() == installed
    result = CliRunner().invoke(hooks, ["list"])
    assert result.exit_code == 2
    assert result.output == f"Error: hooks root {installed} is not a directory\n"
    # without a checkout's hookdirs/ either, the installed path is the root, and must exist
    installed.unlink()
    monkeypatch.setattr("worker.config.REPO_HOOKDIRS", tmp_path / "no-checkout")
    assert default_hooks_root() == installed
    assert CliRunner().invoke(hooks, ["list"]).exit_code == 2
