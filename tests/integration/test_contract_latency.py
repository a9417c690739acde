"""A refused message's `fail` event goes out at once, never at the worker loop's next tick (100 ms
when idle): none of 500 refusals, each sent as soon as the last one's event is seen, takes that
long. The first refusal after start-up is not measured: its lag (0.2-2 s on this machine, which
failed two full runs) is the worker's start-up, not its loop."""

from __future__ import annotations

import uuid
from datetime import datetime

from tests.support import broker_conn
from worker.publish import publish_op


def test_a_refusal_is_published_without_waiting_for_a_loop_tick(env, tap, start_worker):
    start_worker()
    lag = []
    with broker_conn() as conn:
        env.topology.declare(conn)
        # not measured: the first refusal after start-up
        body = {"op": "pause_vm", "vm": {"uuid": "not-a-uuid"}}
        tap.wait_terminal(publish_op(conn, env.topology, body, request_id=str(uuid.uuid4())))
        # each published as soon as the last one's event is seen: now and then while the worker
        # still waits for the confirm of the last one's dead letter
        for i in range(500):
            body = {"op": "pause_vm", "vm": {"uuid": f"not-a-uuid-{i}"}}
            ev = tap.wait_terminal(
                publish_op(conn, env.topology, body, request_id=str(uuid.uuid4()))
            )
            built = datetime.fromisoformat(ev["time"].replace("Z", "+00:00")).timestamp()
            lag.append((ev["_received"] - built) * 1000)  # from refused to seen
    slow = [(i, round(t)) for i, t in enumerate(lag) if t >= 90]  # a loop tick: 100 ms
    assert not slow, f"{len(slow)} of {len(lag)} refusals waited (index, ms): {slow}"
