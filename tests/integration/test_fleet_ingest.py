"""The fleet ingest on the real broker: a worker on test:///default does operations, the ingest
follows `<prefix>.events.log` and `<prefix>.ops.log` into SQLite; a dead-lettered message is
listed and stays in its queue; an ingest process killed with SIGKILL mid-stream and started
again has stored every message exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from kombu import Connection, Producer

from tests import fleetdata as fd
from tests.support import BROKER, broker_conn, queue_depth, read_stream, small_vm, wait_for
from worker.fleet import queries as q
from worker.fleet import store as st
from worker.fleet.ingest import Ingest
from worker.topology import Topology


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[str, sa.Engine]]:
    url = st.default_url(tmp_path / "fleet")
    e = st.open_store(url)
    yield url, e
    e.dispose()


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_the_ingest_follows_a_real_worker_into_the_store(
    env, tap, start_worker, test_domains, store
):
    _, engine = store
    start_worker()
    committed: list[dict[str, Any]] = []
    ingest = Ingest(
        engine, env.settings(), on_commit=committed.extend, broker=BROKER, poll_interval=0.5
    )
    stop = threading.Event()
    t = threading.Thread(target=ingest.run, args=(stop,), daemon=True)
    t.start()
    try:
        vm = small_vm("fleet")
        test_domains.append(vm["uuid"])
        started = env.publish("start_vm", vm)
        assert tap.wait_terminal(started)["data"]["phase"] == "after"
        bad = env.publish("pause_vm", {"uuid": str(uuid.uuid4())})  # no such domain: fails
        assert tap.wait_terminal(bad)["data"]["phase"] == "fail"

        def stored() -> dict[str, Any] | None:
            with engine.connect() as c:
                r = q.get_request(c, bad)
                return r if r and r.get("phase") == "fail" and r.get("messages") else None

        got = wait_for(stored, 20, "the failed request in the store")
        assert got["error_code"] == "no_domain" and got["host"] == env.host
        with engine.connect() as c:
            ok = q.get_request(c, started)
            vmrow = q.get_vm(c, vm["uuid"])
            host = q.get_host(c, env.host)
        assert ok is not None and ok["result"] == "ok" and ok["state"] == "running"
        assert [e["phase"] for e in ok["events"]] == ["before", "after"]
        assert ok["messages"][0]["body"]["op"] == "start_vm"
        assert vmrow is not None and vmrow["state"] == "running" and vmrow["name"] == vm["name"]
        assert host is not None and host["status"] == "up" and host["said"] == "online"
        assert {e["request_id"] for e in committed if e["kind"] == "op"} >= {started, bad}
        assert all(e["id"] for e in committed if e["kind"] == "op")

        # the dead letter: listed from the broker, and still in its queue
        def dead() -> list[dict[str, Any]]:
            with engine.connect() as c:
                return q.list_dead_letters(c, host=env.host)

        [d] = wait_for(dead, 20, "the dead letter in the store")
        assert d["request_id"] == bad and d["error_code"] == "no_domain"
        with engine.connect() as c:
            h = q.get_host(c, env.host)
        assert h is not None and h["dead_letters"] == 1 and h["queue_depth_broker"] == 0
        with broker_conn() as conn:
            wait_for(
                lambda: queue_depth(conn, env.topology.dead_queue.name) == 1,
                10,
                "the dead letter back in its queue",
            )
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


def _publish_events(prefix: str, host: str, n: int) -> None:
    """`n` operation events of `host`, straight onto the events exchange (no worker)."""
    topo = Topology(prefix, host)
    vm = str(uuid.uuid4())
    with Connection(BROKER) as conn:
        producer = Producer(conn.channel(), exchange=topo.events)
        for i in range(n):
            r = str(uuid.uuid4())
            phase = "fail" if i % 10 == 0 else "after"
            ev = fd.op(host, "start_vm", phase, time.time(), vm, r)
            producer.publish(
                json.dumps(ev),
                routing_key=f"{host}.start_vm.{phase}",
                content_type="application/cloudevents+json",
            )


def _ingest_process(env: Any, url: str, log: Path) -> subprocess.Popen[bytes]:
    args = ["--url", url, "--poll-interval", "60"]
    args += ["--batch-size", "100"]  # many commits: the kill lands between two of them
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.fleet.ingest", *args],
            env=env.env_vars() | {"VMWORKER_LOG_LEVEL": "info"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_an_ingest_killed_mid_stream_loses_and_repeats_nothing(
    env, tap, start_worker, test_domains, store, tmp_path
):
    url, engine = store
    start_worker()
    vm = small_vm("kill")
    test_domains.append(vm["uuid"])
    ids = [env.publish("start_vm", vm)]
    ids += [env.publish(op, {"uuid": vm["uuid"]}) for op in ("pause_vm", "resume_vm")]
    for r in ids:
        tap.wait_terminal(r)
    other = f"{env.host}x"  # events of a second, made-up host: the bulk of the stream
    env.other_hosts.append(other)
    _publish_events(env.prefix, other, 2000)

    log = tmp_path / "ingest.log"
    proc = _ingest_process(env, url, log)
    try:
        wait_for(lambda: _count(engine, st.events) >= 100, 60, "the first batches stored")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        partial = _count(engine, st.events)
        with broker_conn() as conn:
            in_stream = read_stream(conn, f"{env.prefix}.events.log", timeout=10)
            ops_logged = read_stream(conn, f"{env.prefix}.ops.log", timeout=5)
        # heartbeats are not stored as events: every other event is, once
        expected = {
            json.loads(m.body)["id"]
            for m in in_stream
            if json.loads(m.body)["type"] != "vmworker.host.heartbeat"
        }
        assert 100 <= partial < len(expected), "the kill did not land mid-stream"
        proc = _ingest_process(env, url, log)
        wait_for(lambda: _count(engine, st.events) >= len(expected), 90, "every event stored")
        wait_for(lambda: _count(engine, st.ops_messages) >= len(ops_logged), 30, "every op stored")
        with engine.connect() as c:
            stored = [r[0] for r in c.execute(sa.select(st.events.c.event_id))]
            msgs = [r[0] for r in c.execute(sa.select(st.ops_messages.c.message_id))]
            offsets = {r.stream: r.stream_offset for r in c.execute(sa.select(st.offsets))}
            reqs = q.list_requests(c, host=env.host)["items"]
        assert len(stored) == len(set(stored)) == len(expected) and set(stored) == expected
        assert sorted(msgs) == sorted(m.properties["message_id"] for m in ops_logged)
        assert offsets[f"{env.prefix}.events.log"] == in_stream[-1].headers["x-stream-offset"]
        assert {r["request_id"] for r in reqs} == set(ids)
        assert all(r["result"] == "ok" for r in reqs)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
