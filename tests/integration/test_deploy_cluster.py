"""A three-node RabbitMQ cluster started by the test (private nodes, own names, ports and data):
the worker is connected to one node, that node is stopped while operations flow, and nothing is
lost or run twice; the worker is back on another node within seconds.

The figures (ops sent, done, duplicates, failover time) are printed and attached to the test's
report (`record_property`)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

import pytest
from kombu import Connection, Consumer, Queue

from tests.brokers import RabbitNode
from tests.support import ThreadWorker, wait_depth, wait_for, wait_until
from worker.publish import build_body, publish_op
from worker.topology import Topology

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]

OPS = 240  # published at ~40/s: the stop lands in the middle of the flow
RATE = 40.0


class Collector:
    """Every event of a prefix, through an exclusive queue on one node (not the one stopped)."""

    def __init__(self, url: str, topology: Topology) -> None:
        self.events: list[dict[str, Any]] = []
        self._conn = Connection(url)
        self._stop = threading.Event()
        q = Queue(
            f"{topology.prefix}.tap.{uuid.uuid4().hex[:8]}",
            topology.events,
            routing_key="#",
            exclusive=True,
            auto_delete=True,
            durable=False,
        )
        q.bind(self._conn.default_channel).declare()
        self._consumer = Consumer(
            self._conn.default_channel,
            queues=[q],
            no_ack=True,
            on_message=lambda m: self.events.append(json.loads(m.body)),
        )
        self._consumer.consume()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with suppress(TimeoutError):
                self._conn.drain_events(timeout=0.1)

    def terminal_ids(self) -> set[str]:
        return {
            e["requestid"]
            for e in list(self.events)
            if e.get("data", {}).get("phase") in ("after", "fail")
        }

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with suppress(Exception):
            self._conn.release()


def _publisher(url: str, topology: Topology, sent: list[str], errors: list[str]) -> None:
    """Publish OPS define_vm operations at RATE/s, each confirmed; a publish that fails is
    retried with the same message_id (the worker's journal makes that harmless)."""
    t0 = time.monotonic()
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        for i in range(OPS):
            rid = str(uuid.uuid4())
            vm = {"uuid": rid, "name": f"vmw-cl-{rid[:8]}", "vcpus": 1, "memory_mib": 64}
            for _ in range(20):
                try:
                    publish_op(conn, topology, build_body("define_vm", vm), request_id=rid)
                    sent.append(rid)
                    break
                except Exception as exc:  # e.g. a confirm lost while a leader moves
                    errors.append(repr(exc))
                    time.sleep(0.2)
            time.sleep(max(0.0, t0 + (i + 1) / RATE - time.monotonic()))


def test_losing_the_workers_broker_node_loses_and_doubles_nothing(
    tmp_path, env, test_domains, record_property
):
    nodes = [RabbitNode(tmp_path, name=f"vmwt-cl{i}-{uuid.uuid4().hex[:6]}") for i in range(3)]
    started = time.monotonic()
    collector = None
    worker = None
    try:
        with ThreadPoolExecutor(3) as pool:  # the slow part: boot all three at once
            list(pool.map(lambda n: n.start(), nodes))
        n1, n2, n3 = nodes
        n2.join_cluster(n1)
        n3.join_cluster(n1)
        status = n1.ctl("cluster_status", "--formatter", "json")
        assert len(json.loads(status)["running_nodes"]) == 3, status
        boot_s = time.monotonic() - started

        urls = ";".join(n.url for n in nodes)  # the worker starts on n1, its first URL
        worker = ThreadWorker(env.settings(broker=urls, concurrency=4)).start()
        topo = env.topology
        leader = n1.ctl("list_queues", "name", "leader", "members", "--formatter", "json")
        assert any(
            q["name"] == topo.host_queue.name and len(q["members"]) == 3 for q in json.loads(leader)
        ), leader
        collector = Collector(n3.url, topo)

        sent: list[str] = []
        errors: list[str] = []
        pub = threading.Thread(target=_publisher, args=(n2.url, topo, sent, errors), daemon=True)
        pub.start()
        # well into the flow
        wait_for(lambda: len(collector.terminal_ids()) >= OPS // 4, 60, "a quarter done", 0.02)
        done_before = len(collector.terminal_ids())
        reconnects = worker.service.stats.reconnects
        t_stop = time.monotonic()
        n1.stop_app()  # the node the worker is connected to
        t_stopped = time.monotonic()
        svc = worker.service
        wait_for(
            lambda: svc.stats.reconnects > reconnects and svc.ready.is_set(),
            60,
            "the worker back on another node",
            interval=0.01,
        )
        failover_s = time.monotonic() - t_stop
        pub.join(60)
        assert not pub.is_alive()
        test_domains.extend(sent)  # vm uuid = request id
        wait_until(lambda: set(sent) <= collector.terminal_ids(), 60, interval=0.1)  # or: lost

        evs = list(collector.events)
        # an event whose confirm was lost with the node is sent again from the outbox: same id
        unique = list({e["id"]: e for e in evs}.values())
        fresh = [e for e in unique if not e["data"].get("duplicate")]
        befores = Counter(e["requestid"] for e in fresh if e["data"]["phase"] == "before")
        terminals = Counter(
            e["requestid"] for e in fresh if e["data"]["phase"] in ("after", "fail")
        )
        duplicates = [e for e in unique if e["data"].get("duplicate")]
        lost = [r for r in sent if terminals[r] == 0]
        doubled = [r for r in sent if terminals[r] > 1 or befores[r] > 1]
        failed = [e["data"].get("error") for e in fresh if e["data"]["phase"] == "fail"]
        figures = {
            "cluster_boot_s": round(boot_s, 1),
            "ops_sent": len(sent),
            "ops_done": sum(1 for r in sent if terminals[r] == 1),
            "done_before_stop": done_before,
            "lost": len(lost),
            "doubled": len(doubled),
            "duplicate_events": len(duplicates),  # redelivered finished ops: recorded event
            "events_resent_same_id": len(evs) - len(unique),
            "publish_retries": len(errors),
            "worker_reconnects": worker.service.stats.reconnects,
            "stop_app_s": round(t_stopped - t_stop, 2),
            "failover_s": round(failover_s, 2),
        }
        print("cluster failover figures:", json.dumps(figures))
        for k, v in figures.items():
            record_property(k, v)
        assert len(sent) == OPS, errors[-3:]
        assert lost == [], (len(lost), figures)
        assert doubled == [], (
            figures,
            [
                (
                    e["requestid"][:8],
                    e["data"]["phase"],
                    e["id"][:8],
                    e["data"].get("recovered"),
                    e["data"].get("redelivered"),
                )
                for e in evs
                if e["requestid"] in doubled
            ],
        )
        assert failed == [], failed[:3]
        assert worker.service.stats.reconnects >= 1
        assert failover_s < 15, figures
        with Connection(n2.url) as conn:
            wait_depth(conn, topo.host_queue.name, 0)
            wait_depth(conn, topo.dead_queue.name, 0)
    finally:
        if worker is not None and worker.thread.is_alive():
            worker.stop()
        if collector is not None:
            collector.stop()
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda n: n.stop(), nodes))
