"""Prometheus metrics: served on metrics_port, and they move with the operations."""

from __future__ import annotations

import platform
import socket
import time
import urllib.request
import uuid

import libvirt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ProcessWorker, ThreadWorker, broker_conn, small_vm, wait_depth


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(
    port: int, addr: str = "127.0.0.1"
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://{addr}:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _libvirt_version() -> tuple[int, int, int]:
    n = libvirt.getVersion()
    return n // 1_000_000, n // 1000 % 1000, n % 1000


def _v(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_endpoint_counts_operations_hooks_duplicates_and_dead_letters(
    env, tap, start_worker, test_domains, hooks_root
):
    bad = hooks_root / "after_vm_start" / "50_grumble"
    bad.parent.mkdir(mode=0o755)
    bad.write_text("#!/bin/sh\necho grumble >&2\nexit 1\n")
    bad.chmod(0o755)
    port = _free_port()
    start_worker(metrics_port=port)
    before = _scrape(port)
    assert _v(before, "vmworker_operations_total", op="start_vm", outcome="after") == 0

    vm = small_vm("metrics")
    test_domains.append(vm["uuid"])
    ok = env.publish("start_vm", vm)
    tap.wait_terminal(ok)
    failed = env.publish("pause_vm", {"uuid": str(uuid.uuid4())})  # no such VM: dead-lettered
    tap.wait_terminal(failed)
    again = env.publish("start_vm", vm, request_id=ok)  # the same request: a duplicate
    tap.wait(lambda: tap.terminal(again, include_duplicates=True)[1:])

    with broker_conn() as c:  # dead-lettering follows the confirm of the fail event
        wait_depth(c, env.topology.dead_queue.name, 1)
    after = _scrape(port)
    assert _v(after, "vmworker_operations_total", op="start_vm", outcome="after") == 1
    assert _v(after, "vmworker_operations_total", op="pause_vm", outcome="fail") == 1
    assert (
        _v(after, "vmworker_operation_duration_seconds_count", op="start_vm", outcome="after") == 1
    )
    assert _v(after, "vmworker_hook_duration_seconds_count", point="after_vm_start") == 1
    assert _v(after, "vmworker_hook_failures_total", point="after_vm_start", hook="50_grumble") == 1
    assert _v(after, "vmworker_duplicates_total") == 1
    assert _v(after, "vmworker_dead_letters_total") == 1
    assert _v(after, "vmworker_retries_total", op="start_vm") == 0
    assert _v(after, "vmworker_outbox_size") == 0
    assert _v(after, "vmworker_operations_in_flight") == 0


def _wait_scrape(port: int, pred, timeout: float = 15.0, addr: str = "127.0.0.1") -> dict:
    """Scrape until `pred(metrics)` holds (bounded)."""
    end = time.monotonic() + timeout
    while True:
        try:
            m = _scrape(port, addr)
        except OSError:  # not served yet
            if time.monotonic() > end:
                raise
            m = {}
        if (m and pred(m)) or time.monotonic() > end:
            return m
        time.sleep(0.1)


def _names(m: dict) -> set[str]:
    return {name for name, _ in m}


def test_metrics_tell_the_build_the_broker_connection_the_last_heartbeat_and_the_process(
    env, start_worker
):
    port = _free_port()
    t0 = time.time()
    start_worker(metrics_port=port)
    m = _wait_scrape(port, lambda m: _v(m, "vmworker_last_heartbeat_timestamp_seconds") > 0)
    build = [labels for name, labels in m if name == "vmworker_build_info"]
    assert len(build) == 1
    info = dict(build[0])
    assert info["version"] and info["python"] == platform.python_version()
    assert info["libvirt"] == "{}.{}.{}".format(*_libvirt_version())
    assert m[("vmworker_broker_connected", ())] == 1
    assert t0 <= _v(m, "vmworker_last_heartbeat_timestamp_seconds") <= time.time()
    assert {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "python_info",
    } <= _names(m)
    assert [n for n in _names(m) if n.endswith("_created")] == []


def test_broker_connected_is_0_while_no_broker_answers(env):
    port = _free_port()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    w = ThreadWorker(
        env.settings(broker=f"amqp://guest:guest@127.0.0.1:{dead}//", metrics_port=port)
    )
    w.thread.start()
    try:
        m = _wait_scrape(port, lambda m: ("vmworker_broker_connected", ()) in m)
        assert m[("vmworker_broker_connected", ())] == 0
    finally:
        w.stop()


def test_queue_depth_is_the_host_queue_as_the_broker_counts_it(
    env, start_worker, hooks_root, tmp_path
):
    gate = tmp_path / "gate"
    gate.touch()
    point = hooks_root / "before_vm_start"
    point.mkdir(mode=0o755)
    hook = point / "50_wait"
    hook.write_text(f'#!/bin/sh\nwhile [ -e "{gate}" ]; do sleep 0.05; done\n')
    hook.chmod(0o755)
    port = _free_port()
    start_worker(metrics_port=port, concurrency=1, prefetch=1, heartbeat_interval=0.3)
    env.publish("start_vm", small_vm("depth"))  # held by the hook: the only one taken
    for i in range(3):
        env.publish("start_vm", small_vm(f"depth{i}"))
    try:
        m = _wait_scrape(port, lambda m: _v(m, "vmworker_queue_depth") == 3)
        assert _v(m, "vmworker_queue_depth") == 3
    finally:
        gate.unlink()
    m = _wait_scrape(port, lambda m: _v(m, "vmworker_queue_depth") == 0, timeout=30)
    assert _v(m, "vmworker_queue_depth") == 0


def test_metrics_listen_on_127_0_0_1_by_default(env, start_worker):
    port = _free_port()
    start_worker(metrics_port=port)
    assert _scrape(port)  # 127.0.0.1 answers
    with pytest.raises(ConnectionRefusedError):  # another local address does not
        socket.create_connection(("127.0.0.2", port), timeout=2).close()


def test_run_metrics_flags_choose_the_port_and_address(env, tmp_path):
    port = _free_port()
    args = ("--metrics-port", str(port), "--metrics-address", "127.0.0.2")
    w = ProcessWorker(env, tmp_path / "worker.log", args=args).start()
    try:
        m = _wait_scrape(port, lambda m: bool(m), addr="127.0.0.2")
        assert m[("vmworker_broker_connected", ())] == 1
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        assert w.stop() == 0
