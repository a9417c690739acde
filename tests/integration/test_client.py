"""`vmworker.client` against the real broker and a worker on test:///default: confirmed
publishes, outcomes, failures, timeouts that leave the request alone, duplicates, watches,
replay, a reconnect after the broker closed the client's connection, and the asyncio client."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.support import BROKER, broker_conn, read_stream, small_vm, unique, wait_for, write_hook
from vmworker.client import (
    AsyncClient,
    Client,
    InvalidMessage,
    NoWorkerQueue,
    OperationFailed,
    RequestTimeout,
)
from worker import logs
from worker.cli import main

HOLD = {"hook_timeout": 90}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(autouse=True)
def _worker_logs_quiet() -> None:
    logs.configure("warning", json=False)


@pytest.fixture
def client(env: Any) -> Any:
    c = Client(BROKER, prefix=env.prefix)
    yield c
    c.close()


@pytest.fixture
def gate(hooks_root: Path, tmp_path: Path) -> Path:
    """A file a before_vm_start hook waits for: a start holds until it exists (60 s at most:
    start the worker with HOLD, a hook timeout above that)."""
    gate = tmp_path / "gate"
    hold = f'i=0\nwhile [ ! -e "{gate}" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n'
    write_hook(hooks_root, "before_vm_start", "50_hold", "#!/bin/sh\n" + hold)
    return gate


@pytest.fixture
def worker_vm(start_worker: Any, test_domains: list[str]) -> Callable[..., dict[str, Any]]:
    """Starts a worker (`settings` its own) and gives a small VM named after `tag`, undefined
    when the test ends."""

    def start(tag: str, **settings: Any) -> dict[str, Any]:
        start_worker(**settings)
        vm = small_vm(tag)
        test_domains.append(vm["uuid"])
        return vm

    return start


def test_submit_is_confirmed_with_its_properties_and_result_is_the_after_event(
    env, worker_vm, client
):
    vm = worker_vm("client")
    req = client.submit(
        env.host, "start_vm", vm, correlation_id="order-7", deadline=timedelta(minutes=5),
        traceparent=TRACEPARENT, tracestate="vendor=1",
    )  # fmt: skip
    # confirmed: the broker has it (the ops log holds it) when submit returns
    with broker_conn() as c:
        [m] = read_stream(c, f"{env.prefix}.ops.log")
    assert m.properties["message_id"] == req.request_id
    assert m.properties["correlation_id"] == "order-7"
    assert m.properties["user_id"] == "guest"
    assert m.headers["traceparent"] == TRACEPARENT and m.headers["tracestate"] == "vendor=1"
    assert "x-deadline" in m.headers
    ev = req.result(20)
    assert ev.phase == "after" and ev.data["state"] == "running"
    assert ev.request_id == req.request_id and ev.data["correlation_id"] == "order-7"
    assert [e.phase for e in req.events] == ["before", "after"]
    assert req.wait_phase("before").phase == "before"


def test_a_typed_message_is_sent_and_a_bad_one_is_refused_before_sending(env, worker_vm, client):
    vm = worker_vm("typed")
    msg = client.message("define_vm", vm)
    assert type(msg).__name__ == "DefineVm" or msg.op == "define_vm"
    assert client.submit(env.host, msg).result(20).phase == "after"
    with pytest.raises(InvalidMessage, match="nothing sent"):
        client.submit(env.host, "start_vm", {"uuid": "not-a-uuid"})
    with pytest.raises(NoWorkerQueue, match="vmworker broker setup --host"):
        client.submit(unique("nosuch"), "pause_vm", {"uuid": vm["uuid"]})


def test_a_failure_raises_with_the_error_object(env, start_worker, client):
    start_worker()
    req = client.submit(env.host, "pause_vm", {"uuid": small_vm()["uuid"]})
    with pytest.raises(OperationFailed) as caught:
        req.result(20)
    err = caught.value
    assert err.code == "no_domain" and err.source == "libvirt"
    assert err.error["message"] and err.event.phase == "fail"
    assert "libvirt/no_domain" in str(err)


def test_a_timeout_leaves_the_request_alone_and_it_still_completes(env, worker_vm, gate, client):
    vm = worker_vm("slow", **HOLD)
    req = client.submit(env.host, "start_vm", vm)
    with pytest.raises(RequestTimeout) as caught:
        req.result(0.5)
    assert isinstance(caught.value, TimeoutError) and req.request_id in str(caught.value)
    assert req.wait_phase("before", 10).phase == "before"  # it runs on
    gate.touch()
    assert req.result(20).data["state"] == "running"


def test_a_duplicate_resolves_like_the_original(env, worker_vm, client):
    vm = worker_vm("dup")
    first = client.submit(env.host, "define_vm", vm).result(20)
    again = client.submit(env.host, "define_vm", vm, request_id=first.request_id).result(20)
    assert again.duplicate and again.phase == "after" and again["id"] != first["id"]


def test_a_failed_requests_duplicate_raises_too(env, start_worker, client):
    start_worker()
    rid = unique("req-")
    vm = {"uuid": small_vm()["uuid"]}
    with pytest.raises(OperationFailed):
        client.submit(env.host, "pause_vm", vm, request_id=rid).result(20)
    with pytest.raises(OperationFailed) as caught:
        client.submit(env.host, "pause_vm", vm, request_id=rid).result(20)
    assert caught.value.event.duplicate and caught.value.code == "no_domain"


def test_watch_a_vm_gives_its_events_only(env, start_worker, test_domains, client):
    start_worker()
    vm, other = small_vm("watched"), small_vm("other")
    test_domains += [vm["uuid"], other["uuid"]]
    with client.watch(vm=vm["uuid"], idle=5) as events:
        client.submit(env.host, "define_vm", other)
        last = client.submit(env.host, "start_vm", vm)
        seen = []
        for ev in events:
            seen.append(ev)
            if ev.request_id == last.request_id and ev.terminal:
                break
    assert {ev.get("subject") for ev in seen} == {vm["uuid"]}
    assert [ev.phase for ev in seen] == ["before", "after"]
    assert last.result(0).phase == "after"  # the handle saw them too


def test_replay_as_new_runs_again_and_its_handle_gets_the_outcome(env, worker_vm, client):
    vm = worker_vm("replay")
    first = client.submit(env.host, "define_vm", vm)
    first.result(20)
    [p] = client.replay(request_ids=[first.request_id], as_new=True, idle=0.3)
    assert p.sent and p.new_id != first.request_id and p.request is not None
    ev = p.request.result(20)
    assert ev.data["replay_of"] == first.request_id and not ev.duplicate
    [same] = client.replay(request_ids=[first.request_id], idle=0.3)
    assert same.request is not None and same.request.result(20).duplicate
    with pytest.raises(ValueError, match="choose messages"):
        client.replay()


def _close_connection_of(client: Client) -> None:
    """The broker closes the client's own connection (as an operator or a node would)."""
    port = str(client.conn.connection.transport.sock.getsockname()[1])
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "peer_port", "pid"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    [pid] = [line.split()[1] for line in listing.splitlines() if line.split()[:1] == [port]]
    subprocess.run(
        ["rabbitmqctl", "close_connection", pid, "closed by test_client"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip


def _gone(queue: str) -> bool:
    try:
        with broker_conn() as c, c.channel() as ch:
            ch.queue_declare(queue, passive=True)
    except Exception as exc:
        return "NOT_FOUND" in str(exc) or getattr(exc, "code", None) == 404
    return False


def test_the_client_reconnects_and_gets_an_outcome_published_while_it_was_away_and_publishes_on(
    env, worker_vm, gate, tap, client
):
    vm = worker_vm("away", **HOLD)
    req = client.submit(env.host, "start_vm", vm)
    watch = client.watch(vm=vm["uuid"])
    _close_connection_of(client)
    wait_for(lambda: _gone(client.queue_name), 10, "the client's queue deleted with its connection")
    gate.touch()
    tap.wait_terminal(req.request_id)  # published while the client's queue was gone
    assert req.result(20).data["state"] == "running"
    assert client.reconnects == 1 and client.recovered >= 1  # read from the events log
    assert [e.phase for e in watch.poll(0)][-1] == "after"  # the watch got it too, once
    # the client works on: its queue and bindings are back
    again = client.submit(env.host, "pause_vm", {"uuid": vm["uuid"]})
    assert again.result(20).data["state"] == "paused"
    assert [e.request_id for e in watch.poll(0) if e.terminal] == [again.request_id]
    # lost again, noticed by a publish this time: it reconnects and sends it then
    _close_connection_of(client)
    wait_for(lambda: _gone(client.queue_name), 10, "the client's queue deleted with its connection")
    resumed = client.submit(env.host, "resume_vm", {"uuid": vm["uuid"]})
    assert client.reconnects == 2
    assert resumed.result(20).data["state"] == "running"


def test_the_asyncio_client(env, worker_vm, gate):
    vm = worker_vm("async", **HOLD)

    async def main() -> dict[str, Any]:
        async with AsyncClient(BROKER, prefix=env.prefix) as client:
            events = await client.watch(vm=vm["uuid"])
            req = await client.submit(env.host, "start_vm", vm, correlation_id="async-1")
            with pytest.raises(RequestTimeout):
                await req.result(0.3)  # the start waits on the gate
            gate.touch()
            phases = [ev.phase async for ev in req.stream()]
            ev = await req.result(5)
            with pytest.raises(OperationFailed) as caught:
                bad = await client.submit(env.host, "pause_vm", {"uuid": small_vm()["uuid"]})
                await bad.result(20)
            watched = []
            async for w in events:
                watched.append(w.phase)
                if w.terminal:
                    break
            await events.close()
            [again] = await client.replay(request_ids=[req.request_id], idle=0.3)
            dup = await again.request.result(20)
            return {
                "phases": phases, "ev": ev, "code": caught.value.code, "watched": watched,
                "dup": dup.duplicate and dup.request_id == req.request_id,
            }  # fmt: skip

    got = asyncio.run(asyncio.wait_for(main(), 60))
    assert got["phases"] == ["before", "after"]
    assert got["ev"].data["correlation_id"] == "async-1"
    assert got["code"] == "no_domain"
    assert got["watched"] == ["before", "after"]
    assert got["dup"]  # a replay through the asyncio client, resolved by its duplicate


def test_publish_wait_prints_the_terminal_event_and_exits_1_on_fail(env, worker_vm):
    vm = worker_vm("cli")
    cli_env = {"VMWORKER_BROKER": BROKER, "VMWORKER_PREFIX": env.prefix}
    args = ["publish", "--host", env.host, "start_vm", "--vm-uuid", vm["uuid"], "--spec", "-"]
    res = CliRunner().invoke(main, [*args, "--wait", "20"], input=json.dumps(vm), env=cli_env)
    assert res.exit_code == 0, res.output
    rid, line = res.stdout.strip().splitlines()
    ev = json.loads(line)
    assert ev["requestid"] == rid and ev["data"]["phase"] == "after"

    args = ["publish", "--host", env.host, "pause_vm", "--vm-uuid", small_vm()["uuid"]]
    res = CliRunner().invoke(main, [*args, "--wait", "20"], env=cli_env)
    assert res.exit_code == 1, res.output
    rid, line = res.stdout.strip().splitlines()
    ev = json.loads(line)
    assert ev["requestid"] == rid and ev["data"]["error"]["code"] == "no_domain"


def test_a_message_no_queue_takes_comes_back_and_is_an_error(env):
    """Without the ops log stream (bound with `#`), `mandatory` is what tells: the broker
    returns the message before its confirm."""
    from kombu import Exchange

    with broker_conn() as c, c.channel() as ch:
        for name in (f"{env.prefix}.ops", f"{env.prefix}.events"):
            Exchange(name, "topic", durable=True)(ch).declare()
    with Client(BROKER, prefix=env.prefix) as client:
        for _ in range(2):  # the channel is good for the next publish
            with pytest.raises(NoWorkerQueue, match="vmworker broker setup --host"):
                client.submit(env.host, "pause_vm", {"uuid": small_vm()["uuid"]}, check_queue=False)
        assert client.reconnects == 0
