"""Publishing never drops silently: a message no worker queue would receive is an error naming
the host, and `publish` checks a message with the worker's own models before sending it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from tests.support import BROKER, broker_conn, queue_depth, read_stream, small_vm, unique
from worker.cli import main
from worker.publish import build_body, publish_op
from worker.topology import Topology


def _cli(env: Any, *args: str) -> Any:
    return CliRunner().invoke(
        main, list(args), env={"VMWORKER_BROKER": BROKER, "VMWORKER_PREFIX": env.prefix}
    )


def _logged(env: Any) -> list[str]:
    """message ids in the ops-log stream: every message the broker took."""
    with broker_conn() as c:
        return [m.properties.get("message_id") for m in read_stream(c, f"{env.prefix}.ops.log")]


def test_a_host_without_a_queue_is_an_error_until_broker_setup_declares_it(env):
    typo = unique("opnosuchhost")
    env.other_hosts.append(typo)
    vm = small_vm("typo")
    res = _cli(env, "publish", "--host", typo, "start_vm", "--vm-uuid", vm["uuid"])
    assert res.exit_code == 1, res.output
    assert f"no worker queue exists for host {typo!r}" in res.output
    assert f"vmworker broker setup --host {typo}" in res.output
    assert _logged(env) == []  # nothing sent, not even to the ops log

    res = _cli(env, "broker", "setup", "--host", typo)
    assert res.exit_code == 0, res.output
    res = _cli(env, "publish", "--host", typo, "start_vm", "--vm-uuid", vm["uuid"])
    assert res.exit_code == 0, res.output
    rid = res.stdout.strip()
    with broker_conn() as c:
        assert queue_depth(c, Topology(env.prefix, typo).host_queue.name) == 1
    assert _logged(env) == [rid]


def test_the_library_refuses_a_host_without_a_queue(env):
    from worker.publish import NoWorkerQueue

    with broker_conn() as conn:
        Topology(env.prefix, env.host).declare_shared(conn)
        with pytest.raises(NoWorkerQueue, match="nosuch"):
            publish_op(conn, Topology(env.prefix, "nosuch"), build_body("start_vm", small_vm()))
        # the connection is still good: the failed check closed only its own channel
        Topology(env.prefix, env.host).declare(conn)
        publish_op(conn, env.topology, build_body("start_vm", small_vm()))
        assert queue_depth(conn, env.topology.host_queue.name) == 1


@pytest.mark.parametrize(
    ("args", "spec", "fault"),
    [
        (["fly_vm"], None, "unknown op 'fly_vm'"),
        (["start_vm", "--vm-uuid", "not-a-uuid"], None, "uuid"),
        (["define_vm", "--vm-name", "small"], {"memory_mib": 8, "vcpus": 1}, "vm.memory_mib"),
        (["start_vm", "--param", "force=yes"], None, "params"),
    ],
)
def test_publish_checks_the_message_with_the_workers_models_before_sending(
    env, args: list[str], spec: dict[str, Any] | None, fault: str
):
    with broker_conn() as conn:
        env.topology.declare(conn)  # the host exists: only the message is wrong
    if "--vm-uuid" not in args:
        args = [*args, "--vm-uuid", small_vm()["uuid"]]
    extra = ["--spec", "-"] if spec else []
    res = CliRunner().invoke(
        main,
        ["publish", "--host", env.host, *args, *extra],
        input=json.dumps(spec) if spec else None,
        env={"VMWORKER_BROKER": BROKER, "VMWORKER_PREFIX": env.prefix},
    )
    assert res.exit_code != 0, res.output
    [line] = res.output.strip().splitlines()
    assert "nothing sent" in line and fault in line, line
    with broker_conn() as conn:
        assert queue_depth(conn, env.topology.host_queue.name) == 0
    assert _logged(env) == []


def test_replay_to_a_host_without_a_queue_sends_nothing_and_keeps_the_messages(env):
    stopped = f"{env.host}-old"
    typo = unique("nosuch")
    env.other_hosts += [stopped, typo]
    with broker_conn() as c:
        Topology(env.prefix, stopped).declare(c)
    vm = small_vm("replay")
    rid = env.publish("define_vm", vm, routing_key=stopped)
    opts = ["--broker", BROKER, "--prefix", env.prefix, "--idle", "0.3"]

    for source in (["--request-id", rid], ["--from-queue", stopped, "--all"]):
        res = CliRunner().invoke(main, ["replay", *source, "--to-host", typo, *opts])
        assert res.exit_code == 1, res.output
        assert f"no worker queue exists for host {typo!r}" in res.output
        with broker_conn() as c:
            assert queue_depth(c, f"{env.prefix}.ops.{stopped}") == 1  # still there
        assert _logged(env) == [rid]  # nothing more was sent
