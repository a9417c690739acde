"""Hook roots fail closed: a root that cannot be read stops the engine and the CLI; a relative
root works in both runners; a missing interpreter is named; `hooks list` shows skipped files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.support import write_hook as script
from worker import service
from worker.cli import main
from worker.config import Settings
from worker.hooks import HookEngine, HookRootError
from worker.hooks.cli import hooks

REPO = Path(__file__).resolve().parents[2]
DOMXML = "<domain><name>web-1</name><uuid>u-1</uuid><devices/></domain>\n"
# a python3 the pre-warmed runner takes (its name must be python3[.N])
PYTHON3 = Path(sys.executable).with_name("python3")
# what only a script run in the pre-warmed server sees: `hooking` already imported
WARM = "import sys; print('warm' if 'hooking' in sys.modules else 'cold')\n"


def vmworker(monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    """`vmworker ARGS` in this process, without VMWORKER_* settings; the worker's service may
    not be started (it would connect): the test fails at once if it is, rather than hang."""

    def started(*a: object, **kw: object) -> None:
        raise AssertionError("the worker started")

    monkeypatch.setattr(service, "Service", started)
    unset = {k: None for k in os.environ if k.startswith("VMWORKER_")}
    return CliRunner(env=unset).invoke(main, list(args))


# --- the engine -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "file", "dangling symlink"])
def test_engine_refuses_a_root_that_is_not_a_directory(tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "hooks"
    if kind == "file":
        bad.write_text("not a directory\n")
    elif kind == "dangling symlink":
        bad.symlink_to(tmp_path / "gone")
    with pytest.raises(HookRootError) as err:
        HookEngine(bad, inproc=False)
    what = "is not a directory" if kind == "file" else "does not exist"
    assert str(err.value) == f"hooks root {bad} {what}"


def test_engine_takes_an_empty_root(root: Path) -> None:
    res = HookEngine(root, inproc=False).run_chain("before_vm_start", DOMXML, vm_id="u-1")
    assert res.scripts == [] and not res.failed


@pytest.mark.parametrize("prewarm", [False, True], ids=["exec", "prewarm"])
def test_a_relative_root_works_in_both_runners(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prewarm: bool
) -> None:
    script(root, "before_vm_start", "10_sh", "#!/bin/sh\necho sh-ran >&2\n")
    script(root, "before_vm_start", "20_py", f"#!{PYTHON3}\n{WARM}")
    monkeypatch.chdir(tmp_path)
    engine = HookEngine(Path("hooks"), inproc=False, prewarm=prewarm)
    try:
        assert engine.root == root
        monkeypatch.chdir("/")  # made absolute once, at construction
        res = engine.run_chain("before_vm_start", DOMXML, vm_id="u-1")
    finally:
        engine.close()
    assert not res.failed, res.failure_stderr()
    by = {s.name: s for s in res.scripts}
    assert by["10_sh"].stderr_tail == "sh-ran\n"
    assert by["20_py"].stdout_tail == ("warm\n" if prewarm else "cold\n")


def test_settings_make_a_relative_root_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings(hooks_root=Path("hk/root")).hooks_root == tmp_path / "hk" / "root"


@pytest.mark.parametrize("prewarm", [False, True], ids=["exec", "prewarm"])
@pytest.mark.parametrize("shebang", ["#!/usr/bin/python9", "#!/nonexistent/bin/python3"])
def test_a_missing_interpreter_is_named(root: Path, prewarm: bool, shebang: str) -> None:
    script(root, "before_vm_start", "10_policy", f"{shebang}\nprint('never')\n")
    engine = HookEngine(root, inproc=False, prewarm=prewarm)
    try:
        res = engine.run_chain("before_vm_start", DOMXML, vm_id="u-1")
    finally:
        engine.close()
    (s,) = res.scripts
    assert s.rc == 1
    interpreter = shebang[2:]
    assert f"interpreter {interpreter} not found (the script's #! line)" in s.stderr_tail


def test_a_dos_shebang_is_named(root: Path) -> None:
    script(root, "before_vm_start", "10_crlf", "#!/bin/sh\r\nexit 0\r\n")
    res = HookEngine(root, inproc=False).run_chain("before_vm_start", DOMXML, vm_id="u-1")
    assert "interpreter '/bin/sh\\r' not found" in res.scripts[0].stderr_tail
    assert "DOS line endings?" in res.scripts[0].stderr_tail


# --- the CLI ----------------------------------------------------------------------------


def _bad_roots(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    afile = tmp_path / "afile"
    afile.write_text("x\n")
    return {
        "missing": (tmp_path / "no" / "such" / "dir", "does not exist"),
        "file": (afile, "is not a directory"),
    }


@pytest.mark.parametrize("kind", ["missing", "file"])
@pytest.mark.parametrize("how", ["env", "flag"])
def test_hooks_list_and_run_exit_2_on_a_bad_root(
    tmp_path: Path, kind: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, what = _bad_roots(tmp_path)[kind]
    xml = tmp_path / "dom.xml"
    xml.write_text(DOMXML)
    flag: list[str] = []
    if how == "env":
        monkeypatch.setenv("VMWORKER_HOOKS_ROOT", str(bad))
    else:
        flag = ["--hooks", str(bad)]
    for args in (["list"], ["list", "--json"], ["run", "before_vm_start", "--xml", str(xml)]):
        result = CliRunner().invoke(hooks, [*args, *flag])
        assert result.exit_code == 2, (args, result.output)
        assert str(bad) in result.output and "Traceback" not in result.output
        assert "(no hooks)" not in result.output and "chain ok" not in result.output
        if how == "env":  # click's own check of --hooks words it differently
            assert result.output == f"Error: hooks root {bad} {what}\n"


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_worker_run_exits_2_before_starting_on_a_bad_root(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, what = _bad_roots(tmp_path)[kind]
    state = tmp_path / "state"
    done = vmworker(
        monkeypatch,
        *("run", "--hooks", str(bad), "--state-dir", str(state)),
        *("--libvirt", "test:///default", "--broker", "amqp://guest:guest@127.0.0.1:9//"),
    )
    assert done.exit_code == 2, (done.stderr, done.exception)
    assert done.stdout == "" and done.stderr == f"Error: hooks root {bad} {what}\n"
    assert not state.exists()  # nothing was started: not even the journal


def test_worker_run_resolves_a_relative_root_from_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "vmworker.toml"
    config.write_text('hooks_root = "no-such-hooks"\n')
    monkeypatch.chdir(tmp_path)
    done = vmworker(monkeypatch, "run", "--config", str(config))
    assert done.exit_code == 2, (done.stderr, done.exception)
    assert done.stderr == f"Error: hooks root {tmp_path / 'no-such-hooks'} does not exist\n"


@pytest.fixture
def unreadable_root() -> Iterator[Path]:
    """A hooks root that exists but that the user running the CLI may not read."""
    base = Path(tempfile.mkdtemp(prefix="vmw-unreadable-"))
    try:
        base.chmod(0o711)  # others may pass through to the root, not into it
        locked = base / "hooks"
        locked.mkdir(mode=0o700)
        locked.chmod(0o700 if os.geteuid() == 0 else 0o000)
        yield locked
    finally:
        (base / "hooks").chmod(0o700)
        shutil.rmtree(base)


def as_cli_user() -> list[str]:
    """The prefix that runs a command as a user without root's powers (none if we are not root)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot run the CLI as an ordinary user")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]  # nobody


def test_an_unreadable_root_stops_the_cli_and_the_worker(unreadable_root: Path) -> None:
    """As its own process (`python -m worker`): as root, the CLI must run as another user."""
    prefix = as_cli_user()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VMWORKER_")}
    env = {**clean, "VMWORKER_HOOKS_ROOT": str(unreadable_root), "HOME": "/"}
    run = ["run", "--libvirt", "test:///default", "--broker", "amqp://guest:guest@127.0.0.1:9//"]
    for args in (["hooks", "list"], run):
        done = subprocess.run(
            [*prefix, sys.executable, "-m", "worker", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith(f"Error: hooks root {unreadable_root} is not readable"), (
            done.stderr
        )


def test_hooks_list_with_an_empty_root(root: Path) -> None:
    result = CliRunner().invoke(hooks, ["list", "--hooks", str(root), "--no-inproc"])
    assert result.exit_code == 0, result.output
    assert result.output == f"hooks root: {root}\n  (no hooks)\n"


def test_hooks_list_shows_what_it_skips(root: Path) -> None:
    script(root, "before_vm_start", "10_ok", "#!/bin/sh\nexit 0\n")
    script(root, "before_vm_start", "20_forgot_chmod", "#!/bin/sh\nexit 0\n", 0o644)
    (root / "before_vm_start" / "30_subdir").mkdir()
    (root / "before_vm_start" / "40_dangling").symlink_to(root / "gone")
    script(root, "after_vm_start", "50_only_this", "#!/bin/sh\nexit 0\n", 0o600)
    result = CliRunner().invoke(hooks, ["list", "--hooks", str(root), "--no-inproc"])
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert "20_forgot_chmod ---------------- skipped: not executable" in lines
    assert "30_subdir ---------------- skipped: a directory" in lines
    assert "40_dangling ---------------- skipped: dangling symlink" in lines
    assert "after_vm_start" in lines
    assert "50_only_this ---------------- skipped: not executable" in lines
    assert any(line.startswith("10_ok ") and "skipped" not in line for line in lines)


def test_a_root_removed_after_start_up_fails_the_chain(root: Path, tmp_path: Path) -> None:
    script(root, "before_vm_start", "10_policy", "#!/bin/sh\nexit 0\n")
    engine = HookEngine(root, inproc=False)
    moved = root.rename(tmp_path / "moved")
    res = engine.run_chain("before_vm_start", DOMXML, vm_id="u-1")
    assert res.failed
    assert res.scripts[0].refused == f"hooks root {root} does not exist"
    assert engine.inventory()["after_vm_start"][0]["refused"] == f"hooks root {root} does not exist"
    moved.rename(root)
    assert not engine.run_chain("before_vm_start", DOMXML, vm_id="u-1").failed
    assert "after_vm_start" not in engine.inventory()
