"""`vmworker monitor`: the fleet's picture, from events alone, rendered headless."""

from __future__ import annotations

import subprocess
import sys

import libvirt
import pytest
from click.testing import CliRunner
from rich.console import Console

from tests.support import BROKER, ProcessWorker, broker_conn, small_vm, wait_for, wait_until
from worker.cli import main
from worker.monitor import load_fleet, render

STDERR = "quota exceeded: storage pool gold-7 is full"


def test_monitor_shows_states_last_operations_and_the_failing_hooks_stderr(
    env, tap, start_worker, test_domains, hooks_root
):
    good, bad = small_vm("mon-ok"), small_vm("mon-bad")
    test_domains += [good["uuid"], bad["uuid"]]
    point = hooks_root / "before_vm_start"
    point.mkdir(mode=0o755)
    hook = point / "50_quota"
    hook.write_text(
        f'#!/bin/sh\nif [ "$vmId" = "{bad["uuid"]}" ]; then echo "{STDERR}" >&2; exit 2; fi\n'
    )
    hook.chmod(0o755)
    w = start_worker()
    w.service.ownership.grace_s = 0.2

    for op, vm in (("start_vm", good), ("pause_vm", {"uuid": good["uuid"]}), ("start_vm", bad)):
        tap.wait_terminal(env.publish(op, vm))
    # past the grace of the worker's own change, a change is someone else's
    wait_for(lambda: w.service.ownership.owner(good["uuid"]) is None, 10, "the claim to end")
    # the guest goes away behind the worker's back: only a state event tells
    libvirt.open("test:///default").lookupByUUIDString(good["uuid"]).destroy()
    tap.wait(lambda: [e for e in tap.events if e["type"] == "vmworker.state.stopped"])
    w.stop()
    tap.wait(lambda: [e for e in tap.events if e["type"] == "vmworker.host.offline"])

    with broker_conn() as conn:
        view = load_fleet(conn, env.topology, idle=0.5)
    g, b = view.vms[good["uuid"]], view.vms[bad["uuid"]]
    assert (g.state, g.last_op, g.result, g.last_change) == (
        "shutoff",
        "pause_vm",
        "ok",
        "stopped (destroyed)",
    )
    assert (b.last_op, b.result) == ("start_vm", "failed")
    assert view.hosts[env.host].status == "offline"
    [failure] = list(view.failures)
    assert failure.hook == "50_quota" and STDERR in (failure.stderr or "")

    console = Console(record=True, width=220)
    console.print(render(view))
    screen = console.export_text()
    assert env.host in screen and "offline" in screen
    for line_has in (
        (good["name"], "shutoff", "stopped (destroyed)", "pause_vm", "ok"),
        (bad["name"], "start_vm", "failed", "hook/hook_failed"),
    ):
        assert any(all(part in line for part in line_has) for line in screen.splitlines()), (
            line_has,
            screen,
        )
    assert STDERR in screen and "50_quota" in screen

    # the command itself, replaying the log
    res = CliRunner().invoke(
        main,
        [
            "monitor",
            "--once",
            "--broker",
            BROKER,
            "--prefix",
            env.prefix,
            "--idle",
            "0.5",
            "--width",
            "220",
        ],
    )
    assert res.exit_code == 0, res.output
    assert STDERR in res.output and good["name"] in res.output and "offline" in res.output
    # another host only: none of this one's VMs or failures; offline hosts hidden at once
    base = ["monitor", "--once", "--broker", BROKER, "--prefix", env.prefix, "--idle", "0.5"]
    other = CliRunner().invoke(main, [*base, "--width", "220", "--host", "nosuchhost"])
    assert other.exit_code == 0, other.output
    assert good["name"] not in other.output and STDERR not in other.output
    assert "0 host(s), 0 VM(s)" in other.output
    hidden = CliRunner().invoke(main, [*base, "--width", "220", "--offline-after", "0"])
    assert hidden.exit_code == 0, hidden.output
    assert good["name"] not in hidden.output and "1 offline host(s) hidden" in hidden.output


def _monitor_once(env) -> str:  # type: ignore[no-untyped-def]
    """`vmworker monitor --once`, as an operator runs it."""
    res = subprocess.run(
        [sys.executable, "-m", "worker", "monitor", "--once", "--broker", BROKER,
         "--prefix", env.prefix, "--idle", "0.3", "--width", "250"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.timeout(150)
def test_a_host_killed_without_a_goodbye_becomes_down_its_vms_unknown_its_queue_from_the_broker(
    env, tap, tmp_path
):
    w = ProcessWorker(env, tmp_path / "worker.log", heartbeat_interval=0.5).start()
    try:
        tap.wait(lambda: [e for e in tap.events if e["type"] == "vmworker.host.heartbeat"], 30)
        inv = next(e for e in tap.events if e["type"] == "vmworker.host.inventory")
        [vm] = [d for d in inv["data"]["domains"] if d["state"] == "running"]  # the test driver's
    finally:
        w.kill9()
    for _ in range(3):  # nobody takes them now
        env.publish("start_vm", {"uuid": vm["uuid"]})

    def host_line(screen: str) -> str | None:
        lines = [line for line in screen.splitlines() if env.host in line and "DOWN (" in line]
        return lines[0] if lines else None

    screens: list[str] = []

    def down_with_the_brokers_depth() -> str | None:
        screens.append(_monitor_once(env))
        line = host_line(screens[-1])
        return screens[-1] if line and "3" in [c.strip() for c in line.split("│")] else None

    # down after 3 missed beats (2 s); the broker's depth once the queue settled
    screen = wait_until(down_with_the_brokers_depth, 60, interval=0.2)
    assert screen, screens[-1]
    [vm_line] = [line for line in screen.splitlines() if vm["uuid"][:8] in line]
    assert "unknown" in vm_line and "running" not in vm_line, vm_line
    assert f"DOWN: {env.host}" in screen
