"""The fleet bench's generator: the events of N simulated hosts, published to the real broker.

`Fleet` makes the messages (heartbeats, an operation's ops log message and its `before` and
`after` or `fail` events, state events), `Publisher` sends them under a prefix, `paced` keeps
a heartbeat and operation rate for a while. Used by bench/fleet.py's ingest measurement.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from typing import Any

from kombu import Connection, Producer

from bench.common import BROKER
from worker.fleet import queries as q
from worker.topology import Topology

HEARTBEAT_S = 30.0
FAIL_EVERY = 20
OPS = ("start_vm", "stop_vm", "pause_vm", "resume_vm", "set_memory", "attach_disk")


def iso(t: float) -> str:
    return q.iso(t) or ""


# -- the generator ----------------------------------------------------------------------------
class Fleet:
    """N simulated hosts, with VMs, publishing what real ones would."""

    def __init__(self, prefix: str, hosts: int, vms_per_host: int = 10) -> None:
        self.prefix = prefix
        self.hosts = [f"bhost{i:05d}" for i in range(hosts)]
        self.vms = {h: [str(uuid.uuid4()) for _ in range(vms_per_host)] for h in self.hosts}
        self.topo = Topology(prefix, "x")
        self.events = 0  # published to each stream
        self.ops = 0
        self.n_ops = 0

    def heartbeat(self, host: str) -> dict[str, Any]:
        now = time.time()
        return {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": f"vmworker://{host}",
            "type": "vmworker.host.heartbeat",
            "time": iso(now),
            "datacontenttype": "application/json",
            "data": {
                "host": host,
                "worker": {
                    "version": "0.1.0",
                    "pid": 100,
                    "started_at": iso(now - 600),
                    "uptime_s": 600.0,
                },
                "interval_s": HEARTBEAT_S,
                "inventory_digest": "sha256:0f1e2d",
                "vms": {"total": len(self.vms[host]), "by_state": {"running": len(self.vms[host])}},
                "memory": {"total_mib": 262144, "free_mib": 131072},
                "queue_depth": 0,
                "outbox": 0,
                "operations_in_flight": 0,
            },
        }

    def operation(self, host: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(exchange kind, routing key, body) of one operation: its message and events."""
        self.n_ops += 1
        vm = random.choice(self.vms[host])
        op = random.choice(OPS)
        rid = str(uuid.uuid4())
        now = time.time()
        fail = self.n_ops % FAIL_EVERY == 0
        phase = "fail" if fail else "after"
        msg: dict[str, Any] = {"version": 1, "op": op, "vm": {"uuid": vm, "name": f"vm-{vm[:8]}"}}
        base: dict[str, Any] = {
            "specversion": "1.0",
            "source": f"vmworker://{host}",
            "datacontenttype": "application/json",
            "subject": vm,
            "requestid": rid,
        }
        common: dict[str, Any] = {
            "op": op,
            "host": host,
            "vm": {"uuid": vm, "name": f"vm-{vm[:8]}"},
            "request_id": rid,
            "correlation_id": None,
            "redelivered": False,
        }
        hook = {
            "name": "50_vm_channels",
            "kind": "script",
            "point": f"before_{op.removesuffix('_vm')}",
            "rc": 1 if fail else 0,
            "unexpected_rc": False,
            "duration_ms": 3.1,
            "sha256": "ab" * 32,
            "changed_xml": True,
            "stderr_tail": "storage gateway refused: pool locked" if fail else "",
            "stdout_tail": "channel org.qemu.guest_agent.0 added",
            "refused": None,
            "timed_out": False,
            "discarded": None,
        }
        end: dict[str, Any] = {
            **common,
            "phase": phase,
            "recovered": False,
            "attempt": 1,
            "duration_ms": 41.0,
            "state": "running",
            "noop": False,
            "hooks": [hook],
        }
        if fail:
            end["error"] = {
                "code": "hook_failed",
                "source": "hook",
                "message": "50_vm_channels failed (rc=1)",
                "libvirt_code": None,
                "hook": "50_vm_channels",
                "stderr": "storage gateway refused: pool locked",
            }
        out: list[tuple[str, str, dict[str, Any]]] = [
            ("ops", host, msg | {"_rid": rid}),
            (
                "events",
                f"{host}.{op}.before",
                base
                | {
                    "id": str(uuid.uuid4()),
                    "type": f"vmworker.{op}.before",
                    "time": iso(now),
                    "data": common | {"phase": "before", "recovered": False},
                },
            ),
            (
                "events",
                f"{host}.{op}.{phase}",
                base
                | {
                    "id": str(uuid.uuid4()),
                    "type": f"vmworker.{op}.{phase}",
                    "time": iso(now + 0.04),
                    "data": end,
                },
            ),
        ]
        if self.n_ops % 10 == 0:
            out.append(
                (
                    "events",
                    f"{host}.state.resumed",
                    base
                    | {
                        "id": str(uuid.uuid4()),
                        "type": "vmworker.state.resumed",
                        "time": iso(now + 0.05),
                        "data": {
                            "host": host,
                            "vm": common["vm"],
                            "state": "resumed",
                            "reason": "unpaused",
                            "domain_state": "running",
                        },
                    },
                )
            )
        return out


class Publisher:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.conn = Connection(BROKER)
        ch = self.conn.channel()
        self.producers = {
            "events": Producer(ch, exchange=fleet.topo.events),
            "ops": Producer(ch, exchange=fleet.topo.ops),
        }

    def send(self, kind: str, key: str, body: dict[str, Any]) -> None:
        if kind == "ops":
            rid = body.pop("_rid")
            self.producers["ops"].publish(
                json.dumps(body),
                routing_key=key,
                message_id=rid,
                content_type="application/json",
                timestamp=int(time.time()),
            )
            self.fleet.ops += 1
        else:
            self.producers["events"].publish(
                json.dumps(body), routing_key=key, content_type="application/cloudevents+json"
            )
            self.fleet.events += 1

    def heartbeat(self, host: str) -> None:
        self.send("events", f"{host}.host.heartbeat", self.fleet.heartbeat(host))

    def operation(self) -> None:
        for kind, key, body in self.fleet.operation(random.choice(self.fleet.hosts)):
            self.send(kind, key, body)

    def close(self) -> None:
        self.conn.release()


def paced(pub: Publisher, seconds: float, ops_s: float, stop: threading.Event) -> None:
    """Publish for `seconds`: every host's heartbeat once per HEARTBEAT_S, spread evenly, and
    `ops_s` operations per second."""
    hosts = pub.fleet.hosts
    hb_s = len(hosts) / HEARTBEAT_S
    t0 = time.monotonic()
    hb_done = ops_done = 0
    while not stop.is_set():
        el = time.monotonic() - t0
        if el >= seconds:
            break
        while hb_done < int(el * hb_s):
            pub.heartbeat(hosts[hb_done % len(hosts)])
            hb_done += 1
        while ops_done < int(el * ops_s):
            pub.operation()
            ops_done += 1
        time.sleep(0.01)
