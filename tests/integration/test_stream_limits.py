"""The streams' size limit (`x-max-length-bytes`): old segments really go, and a stream made
before the limit existed gets it as a policy from `vmworker broker setup` (docs/deploy.md)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from click.testing import CliRunner
from kombu import Consumer, Producer

from tests.support import BROKER, broker_conn, delete_topology, unique, wait_until
from worker.cli import main
from worker.topology import Topology


@pytest.fixture
def prefix() -> Iterator[str]:
    p = unique("lim")
    yield p
    delete_topology(p, [])


@pytest.fixture
def policies() -> Iterator[list[str]]:
    """Policies a test made, cleared after it (rabbitmqctl takes seconds a call here)."""
    made: list[str] = []
    yield made
    for name in made:
        subprocess.run(["rabbitmqctl", "-q", "clear_policy", name], capture_output=True)


def first_offset(conn: Any, topo: Topology) -> int | None:
    """The offset of the first message a reader from `first` gets (None: empty)."""
    got: list[int] = []
    with conn.channel() as ch:
        ch.basic_qos(0, 10, False)

        def on_message(m: Any) -> None:
            got.append(int(m.headers["x-stream-offset"]))
            m.ack()

        consumer = Consumer(ch, queues=[topo.events_log_from("first")], on_message=on_message)
        consumer.consume()
        end = time.monotonic() + 3
        while not got and time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.2)
        consumer.cancel()
    return got[0] if got else None


def test_a_stream_over_its_byte_limit_drops_its_oldest_segments(prefix: str) -> None:
    topo = Topology(prefix, "h1", events_max_bytes=20_000, segment_bytes=4_000)
    body = "x" * 500
    with broker_conn() as conn:
        assert topo.declare_shared(conn) == []
        producer = Producer(conn.default_channel, exchange=topo.events)

        def publish(n: int) -> None:
            for _ in range(n):
                producer.publish(body, routing_key="h1.host.heartbeat")

        publish(20)
        assert wait_until(lambda: first_offset(conn, topo) == 0, 10)  # all there still
        publish(200)  # 110 KB into a 20 KB stream: whole old segments go

        def moved() -> int | None:
            publish(5)  # retention is judged when a segment fills
            at = first_offset(conn, topo)
            return at if at else None

        at = wait_until(moved, 20, interval=0.2)
        assert at and at > 100, at  # what a late reader sees starts well past the start


def test_setup_gives_a_stream_made_without_a_byte_limit_its_limits_as_a_policy(
    prefix: str, policies: list[str]
) -> None:
    old = Topology(prefix, "h1", ops_max_bytes=None, events_max_bytes=None)
    with broker_conn() as conn:
        assert old.declare_shared(conn) == []  # as a deployment before the byte limits made it
        new = replace(old, ops_max_bytes=5 * 10**9, events_max_bytes=20 * 10**9)
        # a worker or a CLI with the new settings uses it as it is (no PRECONDITION_FAILED)
        assert new.declare_shared(conn) == [f"{prefix}.ops.log", f"{prefix}.events.log"]

    policies += [f"{prefix}.ops.log-limits", f"{prefix}.events.log-limits"]
    res = CliRunner().invoke(main, ["broker", "setup", "--broker", BROKER, "--prefix", prefix])
    assert res.exit_code == 0, res.output
    assert f"applied the limits as policies: {', '.join(policies)}" in res.output

    def ctl(*args: str) -> list[list[str]]:
        out = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True)
        return [ln.split("\t") for ln in out.stdout.splitlines() if prefix in ln]

    applied = {row[0]: row[1] for row in ctl("list_queues", "name", "policy")}
    assert applied == {f"{prefix}.ops.log": policies[0], f"{prefix}.events.log": policies[1]}
    defined = {row[1]: row[4] for row in ctl("list_policies")}  # vhost name pattern to def
    assert '"max-length-bytes":5000000000' in defined[policies[0]]
    assert '"max-length-bytes":20000000000' in defined[policies[1]]
    assert '"max-age":"7D"' in defined[policies[1]]  # one policy at a time applies to a queue


def test_setup_without_rabbitmqctl_names_the_command_to_run(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with broker_conn() as conn:
        Topology(prefix, "h1", ops_max_bytes=None, events_max_bytes=None).declare_shared(conn)
    monkeypatch.setenv("VMWORKER_RABBITMQCTL", "/nonexistent/rabbitmqctl")
    res = CliRunner().invoke(main, ["broker", "setup", "--broker", BROKER, "--prefix", prefix])
    assert res.exit_code == 1, res.output
    assert f"stream {prefix}.ops.log exists without its limits" in res.output
    assert (
        f"rabbitmqctl set_policy -p / --apply-to queues --priority 10 {prefix}.ops.log-limits"
        in res.output
    )
