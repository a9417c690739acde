"""The Celery baseline: the worker one could write in an afternoon, at its safest settings.

The task does `start_vm`'s unit of work: parse and validate the message (the same pydantic
models), build the domain XML (the same builder), define + create on test:///default, and
publish the same two persistent events (`before`, `after`) with publisher confirms. Delivery:
`task_acks_late`, `task_reject_on_worker_lost`, prefetch multiplier 1, prefork with one
process per core. What it lacks is what vmworker adds: no journal (a redelivered message runs
again), no hooks, no per-VM ordering, no dead-lettering.

The worker process reads its names from BENCH_PREFIX / BENCH_HOST (see `make_app`).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from kombu import Connection, Exchange, Producer, Queue

from bench.common import BROKER
from worker import events
from worker.topology import Topology

TASK = "bench.start_vm"


def names(prefix: str) -> dict[str, str]:
    return {"queue": f"{prefix}.celery", "exchange": f"{prefix}.celery"}


def make_app(prefix: str, host: str) -> Celery:
    n = names(prefix)
    app = Celery("vmworker_bench", broker=BROKER, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=os.cpu_count() or 1,
        worker_pool="prefork",
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=n["queue"],
        task_default_exchange=n["exchange"],
        task_default_routing_key=n["queue"],
        task_queues=[Queue(n["queue"], Exchange(n["exchange"], "direct"), routing_key=n["queue"])],
        task_create_missing_queues=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
        control_exchange=f"{prefix}.celeryctl",
        event_exchange=f"{prefix}.celeryev",
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
        worker_hijack_root_logger=False,
    )
    topo = Topology(prefix, host)
    state: dict[str, Any] = {}

    def _libvirt() -> Any:
        if "lv" not in state:  # per pool process, opened after the fork
            import libvirt

            state["lv"] = libvirt.open("test:///default")
        return state["lv"]

    def _publish(rk: str, ev: dict[str, Any]) -> None:
        if "producer" not in state:
            conn = Connection(BROKER, transport_options={"confirm_publish": True})
            conn.connect()
            state["conn"] = conn
            state["producer"] = Producer(conn.channel())
        events.publish(state["producer"], topo.events, rk, ev)

    @app.task(name=TASK, bind=True)
    def start_vm(self: Any, body: str) -> None:
        from handlers.domxml import build_domain_xml
        from handlers.spec import VmSpec
        from worker.messages import parse_operation

        t0 = time.monotonic()
        rid = self.request.id
        op = parse_operation(body.encode(), max_bytes=1024 * 1024)
        common: dict[str, Any] = dict(
            request_id=rid,
            correlation_id=None,
            vm_uuid=str(op.vm.uuid),
            vm_name=op.vm_name,
            redelivered=bool(self.request.delivery_info.get("redelivered")),
        )
        _publish(*events.op_event(host, "start_vm", "before", recovered=False, **common))
        assert isinstance(op.vm, VmSpec)  # what start_body() sends
        xml = build_domain_xml(op.vm)
        conn = _libvirt()
        conn.defineXML(xml)
        conn.createXML(xml, 0)
        _publish(
            *events.op_event(
                host,
                "start_vm",
                "after",
                attempt=1,
                duration_ms=round((time.monotonic() - t0) * 1000, 3),
                state="running",
                hooks=[],
                noop=False,
                **common,
            )
        )

    return app


# the worker process: `celery -A bench.celery_app worker ...`
if os.environ.get("BENCH_PREFIX"):
    app = make_app(os.environ["BENCH_PREFIX"], os.environ["BENCH_HOST"])
