"""One oversized message cannot blind the monitors: every event stays within EVENT_MAX bytes, a
rejected message's event copies nothing from it, and `vmworker monitor --once` stays fast."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from tests.support import BROKER, broker_conn, read_stream
from worker.bounds import EVENT_MAX, FIELD_MAX


def name_at_limit(size: int, vm_uuid: str = str(uuid.UUID(int=0))) -> str:
    empty = json.dumps({"version": 1, "op": "start_vm", "vm": {"uuid": vm_uuid, "name": ""}})
    return "n" * (size - len(empty))


def _body_of_size(size: int, vm_uuid: str) -> bytes:
    """A start_vm naming its VM by uuid, the name filling the body to exactly `size` bytes."""
    vm = {"uuid": vm_uuid, "name": name_at_limit(size, vm_uuid)}
    body = json.dumps({"version": 1, "op": "start_vm", "vm": vm}).encode()
    assert len(body) == size
    return body


@pytest.mark.timeout(120)
def test_a_body_at_and_over_the_size_limit_gives_small_events_and_a_fast_monitor(
    env, tap, start_worker
):
    limit = 1024 * 1024  # max_body_bytes, the default
    start_worker(max_body_bytes=limit)
    at_uuid, over_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    at_limit = env.publish("start_vm", body=_body_of_size(limit, at_uuid))
    over = env.publish("start_vm", body=_body_of_size(limit + 1, over_uuid))
    ran, rejected = tap.wait_terminal(at_limit), tap.wait_terminal(over)

    # the message at the limit is valid (a reference's name is free text): it ran, and failed
    assert ran["data"]["phase"] == "fail" and ran["data"]["error"]["source"] == "libvirt"
    name = ran["data"]["vm"]["name"]
    assert len(name) <= FIELD_MAX and name.endswith(f"…[cut: {len(name_at_limit(limit))} chars]")
    # the one over it was never parsed: its event says only what was checked
    assert rejected["data"]["error"]["code"] == "too_large"
    assert rejected["data"]["vm"] == {"uuid": over_uuid, "name": None}
    assert rejected["data"]["op"] == "start_vm"

    with broker_conn() as conn:
        got = read_stream(conn, env.topology.events_log.name)
    bodies = [m.body if isinstance(m.body, bytes) else m.body.encode() for m in got]
    mine = [b for b in bodies if at_limit.encode() in b or over.encode() in b]
    assert len(mine) == 3  # before + fail, and the rejection's fail
    assert max(len(b) for b in bodies) <= EVENT_MAX
    assert b"n" * 2000 not in b"".join(bodies)

    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "worker", "monitor", "--once", "--broker", BROKER,
         "--prefix", env.prefix, "--idle", "0.5", "--width", "120"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    took = time.monotonic() - started
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert any("too_large" in line for line in lines), res.stdout
    assert len(lines) < 100, len(lines)
    assert took < 20, took  # generous: a 1 MB cell took minutes to lay out
