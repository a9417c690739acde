"""The permission regexes of `vmworker broker grant`, the connection builder's TLS rules, and the
readers' check that an event's body speaks for the host its routing key names. (The same things
against a real RabbitMQ: tests/integration/test_security_*.py.)"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest

from worker.amqp import connect, ssl_options, uses_tls
from worker.brokeradmin import api_calls, control_plane_grant, host_grant, monitor_grant
from worker.config import Settings
from worker.subscribe import vouched


def _m(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None  # RabbitMQ matches unanchored, like re.search


def test_host_grant_covers_its_own_queues_and_no_neighbours():
    g = host_grant("vm.prod", "host-a")
    own = ["vm.prod.ops.host-a", "vm.prod.ops.host-a.dead"]
    others = [
        "vm.prod.ops.host-ab",
        "vm.prod.ops.host-a-2",
        "vm.prod.ops.host-b",
        "vm.prod.ops",
        "vm.prod.events",
        "vm.prod.ops.log",
        "vm.prod.events.log",
        "vmXprod.ops.host-a",
        "x.vm.prod.ops.host-a",
        "vm.prod.ops.host-a.dead.x",
    ]
    for name in own:
        assert _m(g.configure, name) and _m(g.write, name) and _m(g.read, name), name
    for name in others:
        assert not _m(g.configure, name), name
    assert _m(g.write, "vm.prod.events") and _m(g.write, "vm.prod.ops.dlx")
    assert not _m(g.write, "vm.prod.ops")  # it may not order operations
    assert not _m(g.read, "vm.prod.events") and not _m(g.read, "vm.prod.events.log")
    assert not _m(g.read, "vm.prod.ops.host-b")


def test_host_topic_keys_are_its_own_and_only_its_own():
    g = host_grant("vm", "host-a")
    ev_write, ev_read = g.topics["vm.events"]
    assert _m(ev_write, "host-a.start_vm.after") and _m(ev_write, "host-a.host.heartbeat")
    for key in ("host-ab.start_vm.after", "host-b.x", "xhost-a.x", "host-a"):
        assert not _m(ev_write, key), key
    assert ev_read == "^$"
    ops_write, ops_read = g.topics["vm.ops"]
    assert _m(ops_read, "host-a") and not _m(ops_read, "host-ab") and not _m(ops_read, "#")
    assert not _m(ops_write, "host-a")
    dlx_write, _ = g.topics["vm.ops.dlx"]
    assert _m(dlx_write, "host-a") and not _m(dlx_write, "host-b")


def test_control_plane_and_monitor_grants():
    cp = control_plane_grant("vm", "cp-1")
    assert _m(cp.write, "vm.ops") and not _m(cp.write, "vm.events")
    assert not _m(cp.read, "vm.ops.host-a") and not _m(cp.configure, "vm.ops")
    assert _m(cp.read, "vm.events.log") and _m(cp.configure, "vm.events.tap.abc")
    mon = monitor_grant("vm", "mon")
    assert not _m(mon.write, "vm.ops") and _m(mon.read, "vm.events")
    assert not _m(mon.read, "vm.ops.log")


@pytest.mark.parametrize("bad", ["host.a", "a b", "", "x/y"])
def test_host_ids_that_are_not_routing_words_are_refused(bad: str):
    with pytest.raises(ValueError):
        host_grant("vm", bad)


def test_management_api_calls_carry_the_same_permissions():
    g = host_grant("vm", "host-a")
    calls = api_calls(g, "/")
    perms = next(body for m, path, body in calls if path == "/api/permissions/%2F/host-a")
    assert perms == {"configure": g.configure, "write": g.write, "read": g.read}
    topic = [body for m, path, body in calls if m == "PUT" and "topic-permissions" in path]
    assert {t["exchange"] for t in topic if t} == set(g.topics)


def _settings(**kw: object) -> Settings:
    return Settings(**kw)  # type: ignore[arg-type]


def test_tls_is_the_urls_choice_and_never_silently_dropped(tmp_path: Path):
    assert not uses_tls(_settings(broker="amqp://a//;amqp://b//"))
    assert uses_tls(_settings(broker="amqps://a//;amqps://b//"))
    with pytest.raises(ValueError, match="mix"):
        uses_tls(_settings(broker="amqps://a//;amqp://b//"))
    with pytest.raises(ValueError, match="not amqps"):
        uses_tls(_settings(broker="amqp://a//", ssl_ca=tmp_path / "ca.pem"))
    with pytest.raises(ValueError, match="EXTERNAL"):
        uses_tls(_settings(broker="amqps://a//", login_method="EXTERNAL"))
    opts = ssl_options(
        _settings(
            broker="amqps://a//",
            ssl_ca=tmp_path / "ca.pem",
            ssl_cert=tmp_path / "c.pem",
            ssl_key=tmp_path / "c.key",
        )
    )
    assert opts["cert_reqs"] == ssl.CERT_REQUIRED and opts["ca_certs"].endswith("ca.pem")
    assert opts["certfile"].endswith("c.pem") and opts["keyfile"].endswith("c.key")


def test_each_failover_url_is_checked_against_its_own_name():
    conn = connect(_settings(broker="amqps://u:p@broker-1.example//;amqps://u:p@localhost:5671//"))
    assert conn.ssl["server_hostname"] == "broker-1.example"
    conn.maybe_switch_next()
    assert conn.ssl["server_hostname"] == "localhost"  # not 127.0.0.1, not broker-1
    plain = connect(_settings(broker="amqp://u:p@h//"))
    assert not plain.ssl
    ext = connect(_settings(broker="amqps://h//", ssl_cert=Path("c.pem"), login_method="EXTERNAL"))
    assert ext.login_method == "EXTERNAL"


def test_an_event_speaks_only_for_the_host_of_its_routing_key():
    ev = {"source": "vmworker://host-a", "data": {"host": "host-a"}}
    assert vouched(ev, "host-a.start_vm.after")
    assert not vouched(ev, "host-b.start_vm.after")
    assert not vouched(
        {"source": "vmworker://host-b", "data": {"host": "host-a"}}, "host-a.x.after"
    )
    assert not vouched({"data": {"host": "host-b"}}, "host-a.x.after")
    assert vouched({"data": {}}, "host-a.x.after") and vouched(ev, None)
