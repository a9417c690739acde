"""The log of a real `vmworker run` process: JSON lines an operator can filter and search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support import ProcessWorker, small_vm

STDERR = "storage gateway refused: pool locked"


def _failing_hook(hooks_root: Path) -> None:
    point = hooks_root / "before_vm_start"
    point.mkdir(mode=0o755)
    hook = point / "50_gate"
    hook.write_text(f'#!/bin/sh\necho "{STDERR}" >&2\nexit 2\n')
    hook.chmod(0o755)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_failed_hook_operation_is_a_warning_with_code_and_stderr_and_every_line_has_host(
    env, tap, hooks_root, tmp_path
):
    _failing_hook(hooks_root)
    log_path = tmp_path / "worker.log"
    w = ProcessWorker(env, log_path).start()
    try:
        rid = env.publish("start_vm", small_vm("logs"))
        assert tap.wait_terminal(rid)["data"]["phase"] == "fail"
    finally:
        assert w.stop() == 0

    lines = _lines(log_path)  # every line is JSON
    names = [e["event"] for e in lines]
    assert "worker.starting" in names and "worker.stopped" in names
    assert [e for e in lines if e.get("host") != env.host] == []

    failed = [e for e in lines if e["event"] == "op.failed"]
    assert len(failed) == 1, names
    f = failed[0]
    assert (f["level"], f["request_id"], f["op"]) == ("warning", rid, "start_vm")
    assert (f["error_code"], f["error_source"], f["hook"]) == ("hook_failed", "hook", "50_gate")
    assert STDERR in f["stderr_tail"]

    hook = [e for e in lines if e["event"] == "hook.failed"]
    assert len(hook) == 1 and hook[0]["level"] == "warning"
    assert (hook[0]["point"], hook[0]["name"], hook[0]["rc"]) == ("before_vm_start", "50_gate", 2)
    assert STDERR in hook[0]["stderr_tail"]
