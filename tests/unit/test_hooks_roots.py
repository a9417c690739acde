"""A missing interpreter is named, in both runners."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.hooks import HookEngine

DOMXML = "<domain><name>web-1</name><uuid>u-1</uuid><devices/></domain>\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "hooks"
    r.mkdir()
    r.chmod(0o755)
    return r


def script(root: Path, point: str, name: str, text: str, mode: int = 0o755) -> Path:
    d = root / point
    d.mkdir(exist_ok=True)
    d.chmod(0o755)
    p = d / name
    p.write_text(text)
    p.chmod(mode)
    return p


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
