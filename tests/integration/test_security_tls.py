"""TLS on a private RabbitMQ node with an AMQPS listener and a CA made by the test: the worker
(logging in with its client certificate, EXTERNAL) and the CLI tools work over amqps://, and a
server certificate from another CA is refused."""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from tests.brokers import RABBIT_BIN, RabbitNode
from tests.identities import Identities
from tests.support import ThreadWorker, unique
from tests.tlsfiles import TestCA
from worker.amqp import connect
from worker.brokeradmin import Rabbitmqctl
from worker.cli import main
from worker.topology import Topology

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    d = tmp_path_factory.mktemp("tls")
    ca, other = TestCA(d, "ca"), TestCA(d, "other-ca")
    server = ca.issue("localhost", server=True, names=("localhost",))  # not 127.0.0.1
    node = RabbitNode(
        d,
        tls={
            "cacertfile": str(ca.pem),
            "certfile": str(server.cert),
            "keyfile": str(server.key),
            "verify": "verify_peer",
            "fail_if_no_peer_cert": False,
        },
        extra_conf="\n".join(
            [
                "auth_mechanisms.1 = PLAIN",
                "auth_mechanisms.2 = AMQPLAIN",
                "auth_mechanisms.3 = EXTERNAL",
                "ssl_cert_login_from = common_name",
            ]
        ),
        plugins=["rabbitmq_auth_mechanism_ssl"],
    )
    node.start()
    ctl = Rabbitmqctl(node.nodename, executable=str(RABBIT_BIN / "rabbitmqctl"), env=node.env())
    try:
        yield SimpleNamespace(node=node, ca=ca, other=other, ctl=ctl)
    finally:
        node.stop()


def _cli(args: list[str], env: dict[str, str], **kw: Any) -> Any:
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False, **kw)


def _events_of(rid: str, env: dict[str, str], want: int, timeout: float = 20) -> list[dict]:
    """`vmworker events --from-start` (over TLS) until `want` events of `rid` are there."""
    end = time.monotonic() + timeout
    while True:
        res = _cli(["events", "--from-start", "--idle", "0.5"], env)
        assert res.exit_code == 0, res.output
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]  # not the logs
        got = [e for e in map(json.loads, lines) if e.get("requestid") == rid]
        if len(got) >= want or time.monotonic() > end:
            return got


def test_worker_and_cli_work_over_amqps_with_certificate_login(tls, env, test_domains):
    node = tls.node
    ids = Identities(node.tls_url, ctl=tls.ctl)
    host_url = ids.grant("--host", env.host, "--prefix", env.prefix, "--certificate-only")
    client = tls.ca.issue(env.host)  # CN = the host's broker user
    # an administrator's CLI over TLS; the first URL is dead (its name is not in the server
    # certificate): the failover must check the second node's certificate against its own name
    admin = {
        "VMWORKER_BROKER": f"amqps://guest:guest@127.0.0.2:{node.port}//;{node.tls_url}",
        "VMWORKER_SSL_CA": str(tls.ca.pem),
        "VMWORKER_PREFIX": env.prefix,
    }
    try:
        res = _cli(["broker", "setup", "--host", env.host], admin)
        assert res.exit_code == 0, res.output
        worker = ThreadWorker(
            env.settings(
                broker=host_url,
                ssl_ca=tls.ca.pem,
                ssl_cert=client.cert,
                ssl_key=client.key,
                login_method="EXTERNAL",
                declare_shared=False,
                allowed_publishers=["guest"],
            )
        ).start()
        try:
            conns = node.ctl("list_connections", "user", "ssl", "auth_mechanism")
            assert f"{env.host}\ttrue\tEXTERNAL" in conns, conns
            vm = {
                "uuid": str(uuid.uuid4()),
                "name": unique("vmw-tls-"),
                "vcpus": 1,
                "memory_mib": 64,
            }
            test_domains.append(vm["uuid"])
            plain = {**admin, "VMWORKER_DECLARE_SHARED": "false"}
            res = _cli(
                [
                    "publish",
                    "--host",
                    env.host,
                    "define_vm",
                    "--vm-uuid",
                    vm["uuid"],
                    "--spec",
                    "-",
                ],
                plain,
                input=json.dumps(vm),
            )
            assert res.exit_code == 0, res.output
            rid = res.stdout.split()[-1]  # the last line; the worker in this process logs too
            evs = _events_of(rid, plain, want=2)
            assert [e["data"]["phase"] for e in evs] == ["before", "after"], evs
            assert evs[-1]["data"]["state"] == "shutoff"
        finally:
            worker.stop()
    finally:
        ids.revoke_all()


def test_server_certificates_from_another_ca_or_for_another_name_are_refused(tls, env):
    node = tls.node
    s = env.settings(broker=node.tls_url, ssl_ca=tls.other.pem)
    with (
        pytest.raises(ssl.SSLCertVerificationError, match=r"self-signed|unable to get"),
        connect(s) as conn,
    ):
        conn.connect()
    # the right CA, but the URL names 127.0.0.1, which the certificate does not
    by_ip = env.settings(
        broker=f"amqps://guest:guest@127.0.0.1:{node.tls_port}//", ssl_ca=tls.ca.pem
    )
    with (
        pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|match"),
        connect(by_ip) as conn,
    ):
        conn.connect()
    res = CliRunner().invoke(
        main,
        ["events", "--idle", "0.2"],
        env={
            "VMWORKER_BROKER": node.tls_url,
            "VMWORKER_SSL_CA": str(tls.other.pem),
            "VMWORKER_PREFIX": env.prefix,
        },
    )
    assert res.exit_code != 0
    assert "CERTIFICATE_VERIFY_FAILED" in repr(res.exception) + res.output
    # the control: the right CA connects, so the refusal above is about the certificate
    with connect(env.settings(broker=node.tls_url, ssl_ca=tls.ca.pem)) as conn:
        conn.connect()
        assert conn.connected


def test_plaintext_is_refused_when_tls_is_configured(env, tmp_path: Path):
    with pytest.raises(ValueError, match="not amqps"):
        connect(
            env.settings(broker="amqp://guest:guest@127.0.0.1:5672//", ssl_ca=tmp_path / "ca.pem")
        )
    res = CliRunner().invoke(
        main,
        ["events", "--idle", "0.2"],
        env={
            "VMWORKER_BROKER": "amqp://guest:guest@127.0.0.1:5672//",
            "VMWORKER_SSL_CA": str(tmp_path / "ca.pem"),
        },
    )
    assert res.exit_code != 0 and "not amqps" in res.output


def test_a_host_granted_in_another_vhost_is_confined_to_it(tls, env):
    node, vhost = tls.node, unique("v")
    node.ctl("add_vhost", vhost)
    node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    ids = Identities(node.tls_url, ctl=tls.ctl)
    try:
        host_url = ids.grant("--host", env.host, "--prefix", env.prefix, "--vhost", vhost)
        tls_env = {"VMWORKER_SSL_CA": str(tls.ca.pem), "VMWORKER_PREFIX": env.prefix}
        admin_url = node.tls_url.rstrip("/") + "/" + vhost
        res = _cli(["broker", "setup", "--host", env.host, "--broker", admin_url], tls_env)
        assert res.exit_code == 0, res.output
        in_vhost = env.settings(
            broker=host_url.rstrip("/") + "/" + vhost, ssl_ca=tls.ca.pem, declare_shared=False
        )
        with connect(in_vhost) as conn:
            Topology.from_settings(in_vhost).declare(conn)  # its own queues, in its vhost
        elsewhere = env.settings(broker=host_url, ssl_ca=tls.ca.pem)  # the default vhost "/"
        with (
            pytest.raises(Exception, match=r"NOT_ALLOWED|ACCESS_REFUSED|access to vhost"),
            connect(elsewhere) as conn,
        ):
            conn.connect()
    finally:
        ids.revoke_all()
        node.ctl("delete_vhost", vhost)
