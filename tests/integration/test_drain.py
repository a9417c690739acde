"""`vmworker drain`, run as an operator runs it (a process), against the real broker and
workers: what it learns from events, its plan, and what it refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.hosts import PrivateLibvirtd, TwoHosts, private_libvirtds, two_workers, where
from tests.support import BROKER, broker_conn, read_stream, small_vm, unique, write_hook
from worker import logs


@pytest.fixture(autouse=True)
def _worker_logs_quiet() -> None:
    logs.configure("warning", json=False)


def drain_cli(env: Any, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "worker", "drain", *args]
    cmd += ["--broker", BROKER, "--prefix", env.prefix]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_dry_run_plans_every_running_vm_round_robin_from_events_and_sends_nothing(
    env, tap, start_worker, test_domains, tmp_path, qemu
):
    # host-a: the test driver, its stock running domain plus two started here, one defined only
    start_worker(heartbeat_interval=1.0)
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
    for h in (b, c):
        env.other_hosts.append(h)
        start_worker(host=h, state_dir=tmp_path / h, libvirt_uri=qemu, heartbeat_interval=1.0)
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


# -- two real libvirt hosts, two workers ------------------------------------------------------
@pytest.fixture(scope="module")
def two_libvirtds(qemu: str) -> Iterator[list[PrivateLibvirtd]]:
    """Two private libvirtds (tests/hosts.py, port slots 0 and 1): a drain of the shared
    qemu:///system would move VMs that are not this test's."""
    with private_libvirtds("drain", 0, 1) as hosts:
        yield hosts


@pytest.fixture
def hosts(env: Any, tmp_path: Path, two_libvirtds: list[PrivateLibvirtd]) -> Iterator[TwoHosts]:
    """A worker on each private libvirtd, beating every second, each the other's peer."""
    with two_workers(env, tmp_path, two_libvirtds[0].uri, two_libvirtds[1].uri) as h:
        h.start_both(heartbeat_interval=1.0)
        yield h


def beat_lists(tap: Any, host: str, uuids: set[str]) -> bool:
    """An inventory of `host` lists every VM of `uuids` running."""
    return any(
        e["type"] == "vmworker.host.inventory"
        and e["source"] == f"vmworker://{host}"
        and uuids <= {d["uuid"] for d in e["data"]["domains"] or [] if d["state"] == "running"}
        for e in list(tap.events)
    )


@pytest.mark.qemu
def test_drain_wait_moves_every_vm_to_the_other_host_parallel_2(env, tap, hosts):
    a, b = hosts.a, hosts.b
    vms = [hosts.running_vm(tap, f"drain{i}") for i in range(3)]
    mine = {vm["uuid"] for vm in vms}
    tap.wait(lambda: beat_lists(tap, a, mine), 20)

    res = drain_cli(env, a, "--to", b, "--parallel", "2", "--wait", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    for vm in vms:  # the results table: each VM, its destination, ok
        line = next(ln for ln in res.stdout.splitlines() if vm["name"] in ln)
        assert b in line and " ok " in line, res.stdout
    assert "3 of 3 VM(s) moved" in res.stdout
    for vm in vms:
        assert where(hosts, vm["uuid"]) == {a: "undefined", b: "running"}

    # never more than 2 migrations under way at once, as the source's events tell
    marks = sorted(
        (e["time"], 1 if e["data"]["phase"] == "before" else -1)
        for e in list(tap.events)
        if e["type"] in ("vmworker.migrate_vm.before", "vmworker.migrate_vm.after")
    )
    assert len(marks) == 6
    under_way = [sum(d for _, d in marks[: i + 1]) for i in range(len(marks))]
    assert max(under_way) <= 2


@pytest.mark.qemu
def test_a_vm_the_destination_refuses_stays_and_the_drain_says_so_and_fails(env, tap, hosts):
    a, b = hosts.a, hosts.b
    vetoed, moved = hosts.running_vm(tap, "veto"), hosts.running_vm(tap, "fine")
    veto = (
        f'#!/bin/sh\nif [ "$vmId" = "{vetoed["uuid"]}" ]; then\n'
        '  echo "policy: not on this host" >&2; exit 2\nfi\n'
    )
    write_hook(hosts.hooks[b], "before_vm_migrate_destination", "10_policy", veto)
    tap.wait(lambda: beat_lists(tap, a, {vetoed["uuid"], moved["uuid"]}), 20)
    res = drain_cli(env, a, "--to", b, "--wait", "--json", timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    rows = {m["vm"]: m for m in json.loads(res.stdout)["moves"]}
    assert rows[moved["uuid"]]["outcome"] == "ok"
    bad = rows[vetoed["uuid"]]
    assert (bad["outcome"], bad["error_code"]) == ("failed", "hook_failed"), bad
    assert "not on this host" in bad["error"]
    # the refused VM still runs where it was
    assert where(hosts, vetoed["uuid"]) == {a: "running", b: "undefined"}


@pytest.mark.qemu
def test_without_wait_every_migration_is_published_at_once_and_its_request_id_printed(
    env, tap, hosts
):
    a, b = hosts.a, hosts.b
    vms = [hosts.running_vm(tap, f"nowait{i}") for i in range(2)]
    tap.wait(lambda: beat_lists(tap, a, {vm["uuid"] for vm in vms}), 20)
    res = drain_cli(env, a, "--to", b, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    sent = {m["vm"]: m["request_id"] for m in json.loads(res.stdout)["moves"]}
    assert set(sent) == {vm["uuid"] for vm in vms} and all(sent.values())
    for rid in sent.values():  # the command did not wait; the source's worker runs them
        term = tap.wait_terminal(rid, 120)["data"]
        assert term["phase"] == "after" and term["destination"] == b, term
    for vm in vms:
        assert where(hosts, vm["uuid"])[b] == "running"
