"""Helpers shared by the reliability tests: hook scripts that make windows for faults, reading the
worker's journal, and counting what a subscriber saw per request."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support import ProcessWorker, wait_for, write_hook

# A hook that marks its run in $mark_dir/<point>-<vmId> (custom properties are the hook's
# environment) and, the first time only, sleeps `$slow_<point>` seconds with its pid in the mark
# (a re-run after a crash goes straight through). The sleeping windows are where the fault tests
# kill things; `kill_sleepers` ends the sleepers a killed worker left behind.
WINDOW_HOOK = """#!/bin/sh
mark="$mark_dir/{point}-$vmId"
if [ -n "$slow_{point}" ] && [ ! -e "$mark" ]; then
    echo $$ > "$mark"
    exec sleep "$slow_{point}"
fi
touch "$mark"
exit 0
"""


def window_hooks(root: Path, *points: str) -> None:
    for point in points:
        write_hook(root, point, "50_window", WINDOW_HOOK.format(point=point))


def kill_sleepers(mark_dir: Path) -> None:
    for mark in mark_dir.iterdir():
        text = mark.read_text().strip()
        if text.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(text), signal.SIGKILL)


def finish_after_restart(env: Any, tap: Any, log: Path, rids: list[str], **settings: Any) -> None:
    """A worker process started again (after a kill -9) finishes every request of `rids` (60 s
    each at most), then stops; it is killed -9 at once if it does not."""
    w = ProcessWorker(env, log, **settings).start()
    try:
        for r in rids:
            tap.wait_terminal(r, timeout=60)
    except BaseException:
        w.kill9()
        raise
    w.stop()


# Sleeps `$sleep_s` seconds on every run (ordering and parallelism tests).
SLEEP_HOOK = """#!/bin/sh
[ -n "$sleep_s" ] && sleep "$sleep_s"
exit 0
"""

# Test-only poison: kills the worker that runs it (its parent) when the op carries the custom
# property poison=1. It lives only in a test's own hooks root: anyone who can install a hook can
# already do this, so it opens nothing in production.
POISON_HOOK = """#!/bin/sh
if [ "$poison" = "1" ]; then
    kill -9 "$PPID"
    sleep 5
fi
exit 0
"""


def journal_rows(state_dir: Path) -> dict[str, dict[str, Any]]:
    """request_id -> its row in the worker's journal (read-only, safe while it runs)."""
    path = state_dir / "journal.sqlite"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        return {r["request_id"]: dict(r) for r in db.execute("SELECT * FROM requests")}
    finally:
        db.close()


def outbox_ids(state_dir: Path) -> list[str]:
    """Event ids in the journal's outbox, in outbox (publishing) order."""
    path = state_dir / "journal.sqlite"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [json.loads(b)["id"] for (b,) in db.execute("SELECT body FROM outbox ORDER BY seq")]
    finally:
        db.close()


def tally(events: list[dict[str, Any]], request_ids: list[str]) -> dict[str, Any]:
    """Per-request counts of what a subscriber saw. An event re-published after a lost confirm
    keeps its id, so events are counted once per id (CloudEvents: source + id identify one)."""
    seen: set[str] = set()
    befores: Counter[str] = Counter()
    terminals: Counter[str] = Counter()
    duplicates: Counter[str] = Counter()
    republished = 0
    attempts: dict[str, int] = {}
    for ev in events:
        if ev["id"] in seen:
            republished += 1
            continue
        seen.add(ev["id"])
        rid, d = ev.get("requestid"), ev.get("data", {})
        if d.get("phase") == "before":
            befores[rid] += 1
        elif d.get("phase") in ("after", "fail"):
            if d.get("duplicate"):
                duplicates[rid] += 1
            else:
                terminals[rid] += 1
                attempts[rid] = int(d.get("attempt") or 0)
    return {
        "sent": len(request_ids),
        "terminal_seen": sum(1 for r in request_ids if terminals[r] >= 1),
        "lost": [r for r in request_ids if terminals[r] == 0],
        "twice": [r for r in request_ids if terminals[r] > 1 or befores[r] > 1],
        "no_before": [r for r in request_ids if befores[r] == 0],
        "duplicates": sum(duplicates[r] for r in request_ids),
        "republished": republished,
        "max_attempt": max(attempts.values(), default=0),
    }


SYSTEM_LIBVIRTD_PID = Path("/run/libvirtd.pid")


def libvirtd_pid() -> int | None:
    """The qemu:///system daemon's pid, from its own pid file: a test's second libvirtd (with
    a pid file of its own) is never taken for it."""
    try:
        pid = int(SYSTEM_LIBVIRTD_PID.read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
    return pid if name == "libvirtd" and state != "Z" else None  # a zombie is dead


def kill_libvirtd() -> None:
    pid = libvirtd_pid()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: libvirtd_pid() is None, 5, "libvirtd to die")


def start_libvirtd(timeout: float = 20.0) -> None:
    """`libvirtd -d` unless one runs, then wait until it answers."""
    if libvirtd_pid() is None:
        subprocess.run(["libvirtd", "-d"], check=False, timeout=30)

    def answers() -> bool:
        cmd = ["virsh", "-c", "qemu:///system", "version"]
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0

    wait_for(answers, timeout, "libvirtd to answer", interval=0.2)
