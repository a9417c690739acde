"""Prometheus metrics: served on metrics_port, and they move with the operations."""

from __future__ import annotations

import socket
import time
import urllib.request
import uuid

from prometheus_client.parser import text_string_to_metric_families

from tests.support import broker_conn, queue_depth, small_vm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


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
        end = time.monotonic() + 5
        while queue_depth(c, env.topology.dead_queue.name) < 1 and time.monotonic() < end:
            time.sleep(0.05)
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
