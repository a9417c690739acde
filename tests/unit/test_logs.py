"""The worker's log lines: one naming scheme, `host` on every line, failures at warning."""

from __future__ import annotations

import ast
import json
import logging
import re
import threading
from pathlib import Path

import structlog

from worker import logs
from worker.errors import OpError

REPO = Path(__file__).resolve().parent.parent.parent
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def _log_calls() -> list[tuple[str, int, str, ast.expr | None]]:
    """(file, line, level, first argument) of each `<logger>.<level>(...)` in worker/, handlers/,
    vmworker/."""
    found = []
    for root in ("worker", "handlers", "vmworker"):
        for path in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LEVELS
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id.endswith("log")
                ):
                    first = node.args[0] if node.args else None
                    rel = str(path.relative_to(REPO))
                    found.append((rel, node.lineno, node.func.attr, first))
    return found


def _documented_events() -> dict[str, str]:
    """event name -> level, from the table in docs/operations.md."""
    text = (REPO / "docs" / "operations.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9_.]+)` \| (debug|info|warning|error) \|", text, re.M)
    return dict(rows)


def test_every_log_event_is_a_dotted_name_documented_in_operations_md():
    calls = _log_calls()
    assert len(calls) > 40  # the scan sees the worker's log calls
    documented = _documented_events()
    bad = []
    for path, line, level, first in calls:
        # `"a" if c else "b"` names two events
        options = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
        if not all(isinstance(o, ast.Constant) and isinstance(o.value, str) for o in options):
            bad.append(f"{path}:{line}: the event is not a literal name")
            continue
        for name in [o.value for o in options if isinstance(o, ast.Constant)]:
            if not NAME.match(name):
                bad.append(f"{path}:{line}: {name!r} is not a dotted snake_case name")
            elif name not in documented:
                bad.append(f"{path}:{line}: {name!r} is not in docs/operations.md")
            elif documented[name] != ("error" if level == "exception" else level):
                bad.append(f"{path}:{line}: {name!r} is logged at {level}, documented otherwise")
    assert not bad, "\n".join(bad)


def test_host_is_on_every_line_from_any_thread_and_from_library_loggers(capsys):
    logs.configure("info", host="h-logs")
    try:
        structlog.get_logger().info("worker.starting")
        t = threading.Thread(target=lambda: structlog.get_logger().warning("broker.unreachable"))
        t.start()
        t.join()
        logging.getLogger("kombu.connection").warning("a library's own words")
        logging.getLogger("amqp").info("below warning: not shown")
    finally:
        logs.configure("info")
    lines = [json.loads(s) for s in capsys.readouterr().err.splitlines()]
    assert [(e["event"], e["level"], e["host"]) for e in lines] == [
        ("worker.starting", "info", "h-logs"),
        ("broker.unreachable", "warning", "h-logs"),
        ("a library's own words", "warning", "h-logs"),
    ]
    assert lines[2]["logger"] == "kombu.connection"


def test_a_failed_operation_is_a_warning_with_its_error_code_and_hook_stderr_tail():
    err = OpError(
        "hook_failed",
        "before_vm_start: 50_gate failed (rc=2)",
        "hook",
        hook="50_gate",
        details={"stderr": "x" * 10_000 + "[50_gate: rc=2] pool locked"},
    )
    with structlog.testing.capture_logs() as got:
        logs.operation_finished(structlog.get_logger(), None, op="start_vm", phase="after")
        logs.operation_finished(structlog.get_logger(), err, op="start_vm", phase="fail")
    ok, failed = got
    assert (ok["event"], ok["log_level"]) == ("op.finished", "info")
    assert (failed["event"], failed["log_level"]) == ("op.failed", "warning")
    assert failed["error_code"] == "hook_failed" and failed["error_source"] == "hook"
    assert failed["hook"] == "50_gate"
    assert failed["stderr_tail"].endswith("[50_gate: rc=2] pool locked")
    assert len(failed["stderr_tail"]) == logs.STDERR_TAIL  # bounded
