"""`vmworker history` and `vmworker replay`, against the real broker and worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import libvirt
import pytest
from click.testing import CliRunner

from tests.support import BROKER, broker_conn, read_stream, small_vm, wait_depth
from worker import logs
from worker.cli import main
from worker.topology import Topology

STDERR = "storage gateway refused: pool locked"


@pytest.fixture(autouse=True)
def _worker_logs_to_stderr() -> None:
    """The worker runs in this process: its logs must not land in the CLI's stdout."""
    logs.configure("warning", json=False)


def _cli(env: Any, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(
        main, [*args, "--broker", BROKER, "--prefix", env.prefix, "--idle", "0.3"]
    )
    return res.exit_code, res.stdout


def _json_cli(env: Any, *args: str) -> dict[str, Any]:
    code, out = _cli(env, *args, "--json")
    assert code == 0, out
    return json.loads(out)


def _gate_hook(hooks_root: Path, gate: Path) -> None:
    point = hooks_root / "before_vm_start"
    point.mkdir(mode=0o755)
    hook = point / "50_gate"
    hook.write_text(f'#!/bin/sh\nif [ -e "{gate}" ]; then echo "{STDERR}" >&2; exit 2; fi\n')
    hook.chmod(0o755)


def _wait_dead(env: Any, n: int) -> None:
    with broker_conn() as c:
        wait_depth(c, env.topology.dead_queue.name, n)


def _ops_logged(env: Any) -> int:
    with broker_conn() as c:
        return len(read_stream(c, f"{env.prefix}.ops.log", timeout=2.0))


def test_a_dead_lettered_request_replayed_after_the_fix_runs_and_leaves_the_dead_queue(
    env, tap, start_worker, test_domains, hooks_root, tmp_path
):
    gate = tmp_path / "gate-closed"
    gate.touch()
    _gate_hook(hooks_root, gate)
    start_worker()
    vm = small_vm("dead")
    test_domains.append(vm["uuid"])
    failed = env.publish("start_vm", vm)
    assert tap.wait_terminal(failed)["data"]["phase"] == "fail"
    other = env.publish("pause_vm", {"uuid": vm["uuid"]})  # fails too: no such domain
    assert tap.wait_terminal(other)["data"]["phase"] == "fail"
    _wait_dead(env, 2)

    # a dry run lists it and sends nothing; both messages stay in the dead queue
    logged = _ops_logged(env)
    report = _json_cli(env, "replay", "--from-dead", env.host, "--request-id", failed, "--dry-run")
    assert report["dry_run"] is True
    [row] = report["replays"]
    assert row["request_id"] == failed and row["as_new"] and not row["sent"]
    assert "50_gate failed (rc=2)" in row["dead_reason"]
    _wait_dead(env, 2)  # what the dry run read is requeued by the broker, a moment later
    assert _ops_logged(env) == logged

    # the cause is fixed; the replay runs as a new request and leaves the dead queue
    gate.unlink()
    report = _json_cli(
        env, "replay", "--from-dead", env.host, "--request-id", failed, "--wait", "20"
    )
    [row] = report["replays"]
    assert row["sent"] and row["phase"] == "after" and not row["duplicate"], row
    new = row["new_request_id"]
    assert new != failed
    phases = [e["data"]["phase"] for e in tap.of(new)]
    assert phases == ["before", "after"]
    assert all(e["data"]["replay_of"] == failed for e in tap.of(new))
    _wait_dead(env, 1)  # the message not chosen is back (the broker requeues it, not at once)
    dom = libvirt.open("test:///default").lookupByUUIDString(vm["uuid"])
    assert dom.isActive()

    # history of the request: published, failed with the hook's stderr, replayed, ran
    entries = _json_cli(env, "history", "--request-id", failed)
    steps = [(e["kind"], e["what"], e["request_id"]) for e in entries]
    assert steps == [
        ("message", "published", failed),
        ("event", "start_vm.before", failed),
        ("event", "start_vm.fail", failed),
        ("message", "published", new),
        ("event", "start_vm.before", new),
        ("event", "start_vm.after", new),
    ], steps
    assert entries[3]["replay_of"] == failed
    code, text = _cli(env, "history", "--request-id", failed)
    assert code == 0 and STDERR in text and "replay of" in text


def test_replay_with_the_original_id_is_a_duplicate_and_as_new_runs_again(
    env, tap, start_worker, test_domains
):
    start_worker()
    vm = small_vm("again")
    test_domains.append(vm["uuid"])
    rid = env.publish("define_vm", vm, correlation_id="change-42")
    assert tap.wait_terminal(rid)["data"]["phase"] == "after"

    # the original id: the worker's journal knows it is done; nothing runs
    report = _json_cli(env, "replay", "--request-id", rid, "--wait", "10")
    [row] = report["replays"]
    assert row["new_request_id"] == rid and not row["as_new"]
    assert row["duplicate"] is True and row["outcome"].startswith("duplicate"), row
    assert [e["data"]["phase"] for e in tap.of(rid)] == ["before", "after", "after"]
    assert tap.of(rid)[-1]["data"]["duplicate"] is True

    # --as-new: a new request that runs, recorded as a replay of the original
    report = _json_cli(env, "replay", "--request-id", rid, "--as-new", "--wait", "10")
    [row] = report["replays"]
    new = row["new_request_id"]
    assert new != rid and row["phase"] == "after" and not row["duplicate"]
    evs = tap.of(new)
    assert [e["data"]["phase"] for e in evs] == ["before", "after"]
    assert all(e["data"]["replay_of"] == rid for e in evs)
    assert all(e["data"]["correlation_id"] == "change-42" for e in evs)

    # --dry-run: listed (the first copy only, sent elsewhere if asked), nothing published
    logged = _ops_logged(env)
    n_events = len(tap.events)
    report = _json_cli(
        env, "replay", "--request-id", rid, "--as-new", "--to-host", "elsewhere", "--dry-run"
    )
    [row] = report["replays"]
    assert row["to_host"] == "elsewhere" and row["from_host"] == env.host and not row["sent"]
    assert _ops_logged(env) == logged
    assert len(tap.events) == n_events

    # by VM, op and time (the ops log read from the stream chunk of --since on)
    report = _json_cli(
        env, "replay", "--vm", vm["uuid"], "--op", "define_vm", "--since", "10m", "--dry-run"
    )
    assert [r["request_id"] for r in report["replays"]] == [rid]  # the first copy only
    report = _json_cli(env, "replay", "--vm", vm["uuid"], "--until", "1h", "--dry-run")
    assert report["replays"] == []

    # the VM's history: its three requests (original, duplicate, as new), in order
    entries = _json_cli(env, "history", "--vm", vm["uuid"])
    published = [e["request_id"] for e in entries if e["kind"] == "message"]
    assert published == [rid, rid, new]
    assert [e["what"] for e in entries if e["kind"] == "event"] == [
        "define_vm.before",
        "define_vm.after",
        "define_vm.after",
        "define_vm.before",
        "define_vm.after",
    ]

    # no criterion, no replay
    res = CliRunner().invoke(main, ["replay", "--broker", BROKER, "--prefix", env.prefix])
    assert res.exit_code != 0 and "--all" in res.output


def test_a_stopped_hosts_queue_is_drained_to_another_host(env, tap, start_worker, test_domains):
    stopped = f"{env.host}-old"
    env.other_hosts.append(stopped)
    with broker_conn() as c:
        Topology(env.prefix, stopped).declare(c)  # its worker is gone; work waits in its queue
    start_worker()
    vm = small_vm("drain")
    test_domains.append(vm["uuid"])
    rids = [
        env.publish("define_vm", vm, routing_key=stopped),
        env.publish("start_vm", {"uuid": vm["uuid"]}, routing_key=stopped),
    ]
    with broker_conn() as c:
        wait_depth(c, f"{env.prefix}.ops.{stopped}", 2)

    report = _json_cli(
        env, "replay", "--from-queue", stopped, "--all", "--to-host", env.host, "--wait", "20"
    )
    assert [r["request_id"] for r in report["replays"]] == rids  # in order, same ids
    assert all(
        r["new_request_id"] == r["request_id"] and r["phase"] == "after" for r in report["replays"]
    )
    assert all(tap.wait_terminal(r)["data"]["host"] == env.host for r in rids)
    with broker_conn() as c:
        wait_depth(c, f"{env.prefix}.ops.{stopped}", 0)
