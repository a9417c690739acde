"""`vmworker drain`, run as an operator runs it (a process), against the real broker and
workers: what it learns from events, its plan, and what it refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.support import BROKER, ThreadWorker, broker_conn, read_stream, small_vm, unique
from worker import logs


@pytest.fixture(autouse=True)
def _worker_logs_quiet() -> None:
    logs.configure("warning", json=False)


def drain_cli(env: Any, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "worker", "drain", *args]
    cmd += ["--broker", BROKER, "--prefix", env.prefix]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _worker(env: Any, tmp_path: Path, host: str, **kw: Any) -> ThreadWorker:
    env.other_hosts.append(host)
    return ThreadWorker(
        env.settings(host=host, state_dir=tmp_path / host, heartbeat_interval=1.0, **kw)
    ).start()


def test_dry_run_plans_every_running_vm_round_robin_from_events_and_sends_nothing(
    env, tap, start_worker, test_domains, tmp_path, qemu
):
    # host-a: the test driver, its stock running domain plus two started here, one defined only
    w_a = start_worker(heartbeat_interval=1.0)
    started = []
    for tag in ("d1", "d2", "off"):
        vm = small_vm(tag)
        test_domains.append(vm["uuid"])
        op = "define_vm" if tag == "off" else "start_vm"
        assert tap.wait_terminal(env.publish(op, vm))["data"]["phase"] == "after"
        if tag != "off":
            started.append(vm)
    # the destinations on another libvirt: test:///default is one host per process
    b, c = unique("hb"), unique("hc")
    workers = [_worker(env, tmp_path, h, libvirt_uri=qemu) for h in (b, c)]
    try:
        for h in (b, c):
            tap.wait(lambda h=h: [e for e in tap.events if e["source"] == f"vmworker://{h}"
                                  and e["type"] == "vmworker.host.online"])  # fmt: skip
        conn = libvirt.open("test:///default")
        active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        running = sorted((d.name(), d.UUIDString()) for d in active)
        conn.close()
        assert {vm["uuid"] for vm in started} <= {u for _, u in running}

        res = drain_cli(env, env.host, "--to", b, "--to", c, "--dry-run", "--json")
        assert res.returncode == 0, res.stderr
        plan = json.loads(res.stdout)
        assert plan["dry_run"] is True
        got = [(m["name"], m["vm"], m["destination"]) for m in plan["moves"]]
        # by name, each in turn to the next --to host; the defined-only VM is not moved
        assert got == [(n, u, [b, c][i % 2]) for i, (n, u) in enumerate(running)]
        assert all(m["request_id"] is None for m in plan["moves"])

        text = drain_cli(env, env.host, "--to", b, "--to", c, "--dry-run")
        assert text.returncode == 0, text.stderr
        assert f"would move {len(running)} VM(s)" in text.stdout
        for name, _ in running:
            assert name in text.stdout

        with broker_conn() as bc:
            ops = [json.loads(m.body) for m in read_stream(bc, env.topology.ops_log.name)]
        assert not [o for o in ops if o.get("op") == "migrate_vm"]
    finally:
        for w in workers:
            w.stop()
        w_a.stop()


def test_a_destination_that_never_sent_a_heartbeat_is_refused_naming_it(env, start_worker, tap):
    start_worker(heartbeat_interval=1.0)
    tap.wait(lambda: [e for e in tap.events if e["type"] == "vmworker.host.online"])
    ghost = unique("ghost")
    res = drain_cli(env, env.host, "--to", ghost, "--inventory-wait", "0")
    assert res.returncode == 2
    assert f"host {ghost} sent no heartbeat: nothing sent" in res.stderr


def test_parallel_without_wait_is_a_usage_error(env):
    res = drain_cli(env, "host-a", "--to", "host-b", "--parallel", "3")
    assert res.returncode == 2 and "needs --wait" in res.stderr
