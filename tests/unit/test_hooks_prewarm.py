"""The pre-warmed runner gives what exec gives: the same Python cases through both runners."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from lxml import etree
from structlog.testing import capture_logs

from tests.support import wait_until
from worker.hooks import HookEngine
from worker.hooks.prewarm import ForkServerRunner, python_interpreter

DOMXML = "<domain><name>web-1</name><uuid>u-1</uuid><devices/></domain>"


@pytest.fixture(scope="module", autouse=True)
def fast_python3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`#!/usr/bin/env python3` finds this interpreter first (no version-manager shim).

    Module-wide, so that every test talks to the same warm server.
    """
    bindir = tmp_path_factory.mktemp("bin")
    (bindir / "python3").symlink_to(sys.executable)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
        yield


@pytest.fixture(scope="module")
def warm_runner() -> Iterator[ForkServerRunner]:
    runner = ForkServerRunner()
    yield runner
    runner.close()


@pytest.fixture(params=["exec", "prewarm"])
def engine(request: pytest.FixtureRequest, root: Path, warm_runner: ForkServerRunner) -> HookEngine:
    runner = warm_runner if request.param == "prewarm" else None
    return HookEngine(root, inproc=False, timeout=5.0, runner=runner)


def py(root: Path, name: str, body: str, point: str = "before_vm_start") -> Path:
    d = root / point
    d.mkdir(exist_ok=True)
    d.chmod(0o755)
    p = d / name
    p.write_text("#!/usr/bin/env python3\n" + textwrap.dedent(body).lstrip())
    p.chmod(0o755)
    return p


def run(engine: HookEngine, point: str = "before_vm_start", payload: str = DOMXML, **kw):
    return engine.run_chain(point, payload, vm_id="u-1", **kw)


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_rc_semantics_are_the_same(engine: HookEngine, root: Path) -> None:
    py(root, "10_ok", "print('fine')")
    py(root, "20_one", "import sys; sys.exit(1)")
    py(root, "30_odd", "raise SystemExit(5)")
    py(root, "40_msg", "import sys; sys.exit('a message')")
    py(root, "50_stop", "import hooking; hooking.exit_hook('stop here')")
    py(root, "60_never", "pass")
    res = run(engine)
    assert [(s.name, s.rc) for s in res.scripts] == [
        ("10_ok", 0),
        ("20_one", 1),
        ("30_odd", 5),
        ("40_msg", 1),
        ("50_stop", 2),
    ]
    assert res.scripts[0].stdout_tail == "fine\n"
    assert res.scripts[3].stderr_tail == "a message\n"
    assert res.scripts[4].stderr_tail == "stop here\n"
    assert res.stopped


def test_uncaught_exception_is_rc1_with_the_scripts_traceback(
    engine: HookEngine, root: Path
) -> None:
    p = py(root, "10_crash", "def f():\n    raise ValueError('bad')\nf()\n")
    (s,) = run(engine).scripts
    assert s.rc == 1
    assert s.stderr_tail.startswith("Traceback (most recent call last):\n")
    assert f'File "{p}", line 4' in s.stderr_tail and "ValueError: bad" in s.stderr_tail
    assert "runpy" not in s.stderr_tail and "forkserver" not in s.stderr_tail


def test_script_sees_the_exec_environment(engine: HookEngine, root: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "sitehelper.py").write_text("VALUE = 'from PYTHONPATH'\n")
    out = tmp_path / "seen.json"
    p = py(
        root,
        "10_env",
        f"""
        import json, os, sys, sitehelper
        json.dump({{
            "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__,
            "file": __file__, "helper": sitehelper.VALUE, "owner": os.environ.get("owner"),
            "vmId": os.environ["vmId"], "error": os.environ.get("_hook_error"),
            "stdin": sys.stdin.read(), "sid": os.getsid(0) == os.getpid(),
            "pgid": os.getpgid(0) == os.getpid(),
        }}, open({str(out)!r}, "w"))
        """,
        point="after_vm_start_fail",
    )
    os.environ["PYTHONPATH"] = str(lib)
    try:
        res = run(engine, "after_vm_start_fail", custom={"owner": "ops"}, error="boom")
    finally:
        del os.environ["PYTHONPATH"]
    assert not res.failed, res.failure_stderr()
    seen = json.loads(out.read_text())
    assert seen == {
        "argv": [str(p)],
        "cwd": str(p.parent),
        "path0": str(p.parent),
        "name": "__main__",
        "file": str(p),
        "helper": "from PYTHONPATH",
        "owner": "ops",
        "vmId": "u-1",
        "error": "boom",
        "stdin": "",
        "sid": True,
        "pgid": True,
    }


def test_edits_through_hooking_and_discards_are_the_same(engine: HookEngine, root: Path) -> None:
    py(
        root,
        "10_edit",
        """
        import hooking
        doc = hooking.read_domxml()
        doc.getElementsByTagName("name")[0].firstChild.data = "web-2"
        hooking.write_domxml(doc)
        """,
    )
    py(
        root,
        "20_garbage",
        """
        import os
        open(os.environ["_hook_domxml"], "w").write("<domain>")
        """,
    )
    py(
        root,
        "30_edit_then_fail",
        """
        import os, sys
        open(os.environ["_hook_domxml"], "w").write("<domain><name>evil</name></domain>")
        sys.exit(1)
        """,
    )
    res = run(engine)
    assert [s.changed_xml for s in res.scripts] == [True, False, False]
    assert (res.scripts[1].discarded or "").startswith("invalid XML")
    assert res.scripts[2].discarded == "exited 1"
    assert etree.fromstring(res.payload).findtext("name") == "web-2"


@pytest.mark.timeout(30)  # the hook sleeps 60 s: only the engine's timeout ends it in time
def test_timeout_kills_the_process_group(engine: HookEngine, root: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    py(
        root,
        "10_hang",
        f"""
        import subprocess, time
        child = subprocess.Popen(["sleep", "60"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(60)
        """,
    )
    engine.timeout = 0.8
    (s,) = run(engine).scripts
    assert s.timed_out and s.rc == -9 and s.stdout_tail == "started\n"
    child = int(pidfile.read_text())
    assert _wait_gone(child)


def test_a_grandchild_outlives_the_script_in_its_process_group(
    engine: HookEngine, root: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "bg.json"
    py(
        root,
        "10_bg",
        f"""
        import json, os, subprocess
        child = subprocess.Popen(["sleep", "30"])
        json.dump({{"me": os.getpid(), "child": child.pid}}, open({str(pidfile)!r}, "w"))
        print("left it running")
        """,
    )
    (s,) = run(engine).scripts
    seen = json.loads(pidfile.read_text())
    try:  # the chain returned while the grandchild (30 s) still holds the script's output
        assert s.rc == 0 and not s.timed_out and s.stdout_tail == "left it running\n"
        assert not _gone(seen["child"]) and os.getpgid(seen["child"]) == seen["me"]
    finally:
        os.kill(seen["child"], signal.SIGKILL)


@pytest.mark.timeout(30)  # the hook sleeps 60 s
def test_closed_output_still_times_out(engine: HookEngine, root: Path) -> None:
    py(root, "10_quiet", "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(60)\n")
    engine.timeout = 0.4
    (s,) = run(engine).scripts
    assert s.timed_out


def test_big_output_is_bounded(engine: HookEngine, root: Path) -> None:
    py(
        root,
        "10_loud",
        """
        import sys
        for i in range(2000):
            sys.stdout.write("o" * 1000 + "\\n")
            sys.stderr.write("e" * 1000 + "\\n")
        sys.stdout.write("END-OUT")
        sys.stderr.write("END-ERR")
        """,
    )
    engine.output_limit = 1024
    (s,) = run(engine).scripts
    assert s.rc == 0
    assert len(s.stdout_tail.encode()) <= 1024 and s.stdout_tail.endswith("END-OUT")
    assert len(s.stderr_tail.encode()) <= 1024 and s.stderr_tail.endswith("END-ERR")


def test_threads_and_atexit_run_before_the_exit(engine: HookEngine, root: Path) -> None:
    py(
        root,
        "10_threads",
        """
        import atexit, threading, time
        atexit.register(lambda: print("atexit ran"))
        def late():
            time.sleep(0.1)
            print("thread done", flush=True)
        threading.Thread(target=late).start()
        """,
    )
    (s,) = run(engine).scripts
    assert s.rc == 0 and s.stdout_tail == "thread done\natexit ran\n"


def test_non_python_and_flagged_scripts_still_run(engine: HookEngine, root: Path) -> None:
    d = root / "before_vm_start"
    d.mkdir()
    d.chmod(0o755)
    for name, text in (
        ("10_sh", "#!/bin/sh\necho shell\n"),
        ("20_unbuffered", f"#!{sys.executable} -u\nprint('flagged')\n"),
    ):
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    res = run(engine)
    assert [(s.rc, s.stdout_tail) for s in res.scripts] == [(0, "shell\n"), (0, "flagged\n")]


def test_concurrent_chains(engine: HookEngine, root: Path) -> None:
    py(root, "10_echo", "import os, time; time.sleep(0.05); print(os.environ['who'])")
    results: dict[int, str] = {}

    def one(i: int) -> None:
        res = run(engine, custom={"who": f"chain-{i}"})
        results[i] = res.scripts[0].stdout_tail

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {i: f"chain-{i}\n" for i in range(8)}


# --- the pre-warmed runner only ----------------------------------------------------------


def test_prewarm_runs_python_scripts_in_the_warm_server(root: Path) -> None:
    py(
        root,
        "10_warm",
        "import sys; print('hooking' in sys.modules, 'xml.dom.minidom' in sys.modules)",
    )
    cold = HookEngine(root, inproc=False)
    warm = HookEngine(root, inproc=False, prewarm=True)
    try:
        assert run(cold).scripts[0].stdout_tail == "False False\n"
        assert run(warm).scripts[0].stdout_tail == "True True\n"
    finally:
        warm.close()


def test_a_dead_server_is_replaced(root: Path) -> None:
    py(root, "10_ok", "print('ok')")
    engine = HookEngine(root, inproc=False, prewarm=True)
    try:
        assert run(engine).scripts[0].stdout_tail == "ok\n"
        runner = engine.runner
        assert isinstance(runner, ForkServerRunner)
        (server,) = [s for s in runner._servers.values() if s is not None]
        server.proc.kill()
        server.proc.wait()
        assert run(engine).scripts[0].stdout_tail == "ok\n"
        (fresh,) = [s for s in runner._servers.values() if s is not None]
        assert fresh is not server and fresh.alive()
    finally:
        engine.close()


def test_an_interpreter_without_a_server_falls_back_to_exec(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.hooks.prewarm.SERVER", Path("/nonexistent/forkserver.py"))
    py(root, "10_ok", "print('ok')")
    engine = HookEngine(root, inproc=False, prewarm=True)
    try:
        assert run(engine).scripts[0].stdout_tail == "ok\n"
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("#!/usr/bin/env python3", "env"),
        ("#!/usr/bin/env python3.11", "env"),
        ("#! /usr/bin/env python3", "env"),
        ("#!/usr/bin/env python2", None),
        ("#!/usr/bin/env -S python3 -u", None),
        ("#!/bin/sh", None),
        ("import os", None),
        (f"#!{sys.executable} -u", None),
    ],
)
def test_which_scripts_are_prewarmed(tmp_path: Path, line: str, expected: str | None) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("python3", "python3.11"):
        (bindir / name).symlink_to(sys.executable)
    script = tmp_path / "s"
    script.write_text(line + "\nprint(1)\n")
    found = python_interpreter(str(script), str(bindir))
    if expected is None:
        assert found is None
    else:
        assert found is not None and found.startswith(str(bindir))


def test_a_hooking_earlier_on_pythonpath_wins(
    engine: HookEngine, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "sitelib"
    lib.mkdir()
    (lib / "hooking.py").write_text("SITE = True\n")
    monkeypatch.setenv("PYTHONPATH", str(lib))
    py(root, "10_which", "import hooking; print(getattr(hooking, 'SITE', False))")
    assert run(engine).scripts[0].stdout_tail == "True\n"


# --- the spare child: forked before its request ------------------------------------------


def _server_pid(engine: HookEngine) -> int:
    runner = engine.runner
    assert isinstance(runner, ForkServerRunner)
    (server,) = [s for s in runner._servers.values() if s is not None]
    return server.proc.pid


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat from the state on: state, ppid, pgrp, session, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    """The live (not zombie) children of pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _wait_gone(pid: int, within: float = 10.0) -> bool:
    return bool(wait_until(lambda: _gone(pid), within, interval=0.02))


def test_the_script_runs_in_the_spare_with_the_environment_of_its_request(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "seen.json"
    py(
        root,
        "10_who",
        f"""
        import json, os
        json.dump({{
            "pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
            "late": os.environ.get("LATE_VAR"), "early": os.environ.get("EARLY_VAR"),
        }}, open({str(out)!r}, "w"))
        """,
    )
    monkeypatch.setenv("EARLY_VAR", "early")
    engine = HookEngine(root, inproc=False, prewarm=True)
    try:
        assert not run(engine).failed  # starts the server; the next spare is forked meanwhile
        server = _server_pid(engine)
        (spare,) = _children(server)
        assert json.loads(out.read_text())["pid"] != spare
        # changed after the spare was forked: the request's environment is what counts
        monkeypatch.setenv("LATE_VAR", "late")
        monkeypatch.delenv("EARLY_VAR")
        res = run(engine)
        assert not res.failed, res.failure_stderr()
        seen = json.loads(out.read_text())
        assert seen == {"pid": spare, "sid": spare, "pgid": spare, "late": "late", "early": None}
        (following,) = _children(server)
        assert following != spare
    finally:
        engine.close()


def test_the_environment_is_the_one_exec_gives_in_the_same_order(
    root: Path, tmp_path: Path, warm_runner: ForkServerRunner
) -> None:
    out = tmp_path / "env.json"
    py(
        root,
        "10_env",
        f"import json, os; json.dump(list(os.environ.items()), open({str(out)!r}, 'w'))",
    )
    seen = []
    for runner in (None, warm_runner):
        engine = HookEngine(root, inproc=False, runner=runner)
        assert not run(engine, custom={"zz_first": "1", "aa_second": "2"}).failed
        # the payload file is another one at each chain
        seen.append([(k, v if k != "_hook_domxml" else "") for k, v in json.loads(out.read_text())])
    assert seen[1] == seen[0]


@contextmanager
def _warm(root: Path, source: str, prints: str) -> Iterator[tuple[HookEngine, int, int]]:
    """A pre-warmed engine that has run `source` (printing `prints`) once: (engine, its fork
    server's pid, the spare's pid); closed on the way out."""
    py(root, "10_ok", source)
    engine = HookEngine(root, inproc=False, prewarm=True)
    try:
        assert run(engine).scripts[0].stdout_tail == prints
        server = _server_pid(engine)
        (spare,) = _children(server)
        yield engine, server, spare
    finally:
        engine.close()


def test_no_spare_is_left_when_the_engine_closes(root: Path) -> None:
    with _warm(root, "print('ok')", "ok\n") as (_, server, spare):
        pass
    assert _wait_gone(server) and _wait_gone(spare)


def test_a_spare_exits_when_its_server_dies(root: Path) -> None:
    with _warm(root, "print('ok')", "ok\n") as (engine, server, spare):
        os.kill(server, signal.SIGKILL)
        assert _wait_gone(spare)
        assert run(engine).scripts[0].stdout_tail == "ok\n"  # by a new server


def test_a_dead_spare_is_replaced(root: Path) -> None:
    source = "import os; print(os.getsid(0) == os.getpid())"
    with _warm(root, source, "True\n") as (engine, server, spare):
        os.kill(spare, signal.SIGKILL)
        assert _wait_gone(spare)
        for _ in range(3):
            assert run(engine).scripts[0].stdout_tail == "True\n"
        assert _server_pid(engine) == server
        (following,) = _children(server)
        assert following != spare


def test_a_server_that_keeps_dying_is_started_three_times_in_all_then_scripts_are_execd(
    root: Path,
) -> None:
    source = f"import os; print(os.getppid() == {os.getpid()})"  # True: started by the engine
    with _warm(root, source, "False\n") as (engine, server, _):  # the first start
        for _ in range(2):  # the second and third
            os.kill(server, signal.SIGKILL)
            assert _wait_gone(server)
            assert run(engine).scripts[0].stdout_tail == "False\n"
            server = _server_pid(engine)
        os.kill(server, signal.SIGKILL)
        assert _wait_gone(server)
        with capture_logs() as logs:
            assert run(engine).scripts[0].stdout_tail == "True\n"
        assert "hook.forkserver.given_up" in [e["event"] for e in logs]
