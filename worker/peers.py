"""Other hosts, for an operation that spans two (a migration): their libvirt, from the `peers`
table of the settings (or the message's override), and their workers, through the broker.

There is no RPC between hosts: `call` publishes an operation to the other host's queue and waits,
with a bound, for its terminal event, on a short-lived connection of its own (the handler runs on
a pool thread; the worker's AMQP link is never blocked). Its private queue is bound to that
host's events before the operation is published, so the answer cannot be missed; a request sent
twice gets the recorded outcome again (`duplicate`), so a retried call is safe.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import libvirt
import structlog
from kombu import Consumer, Queue

from handlers.errors import OpError
from worker import tracing
from worker.amqp import broker_user, connect
from worker.config import Settings
from worker.publish import NoWorkerQueue, publish_op
from worker.topology import Topology

log = structlog.get_logger()


class Peers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _uri(self, host: str, uri: str | None) -> str:
        if uri:
            return uri
        peer = self.settings.peers.get(host)
        if peer is None:
            raise OpError(
                "destination_unreachable",
                f"host {host!r} is not in this worker's peers table and the message names no"
                " destination_uri",
                "validation",
            )
        return peer.libvirt_uri

    def connect(self, host: str, uri: str | None = None) -> libvirt.virConnect:
        target = self._uri(host, uri)
        try:
            return libvirt.open(target)
        except libvirt.libvirtError as exc:
            raise OpError(
                "destination_unreachable",
                f"libvirt of host {host} does not answer at {target}: {exc.get_error_message()}",
                "libvirt",
                libvirt_code=exc.get_error_code(),
            ) from None

    def migration_uri(self, host: str, uri: str | None = None) -> str | None:
        if uri:
            return uri
        peer = self.settings.peers.get(host)
        return peer.migration_uri if peer is not None else None

    def tls(self, host: str) -> bool:
        peer = self.settings.peers.get(host)
        return peer is not None and peer.tls

    def send(
        self, host: str, body: dict[str, Any], *, request_id: str, correlation_id: str | None
    ) -> None:
        try:
            with connect(self.settings) as conn:
                self._publish(conn, host, body, request_id, correlation_id)
        except OpError:
            raise
        except Exception as exc:  # the broker: the other host cannot be told anything
            raise _broker_error(host, exc) from None

    def call(
        self,
        host: str,
        body: dict[str, Any],
        *,
        request_id: str,
        correlation_id: str | None,
        timeout: float,
    ) -> dict[str, Any]:
        topology = Topology.from_settings(self.settings, host)
        got: list[dict[str, Any]] = []

        def on_message(message: Any) -> None:
            try:
                ev = json.loads(message.body)
            except ValueError:
                return
            data = ev.get("data") or {}
            if ev.get("requestid") == request_id and data.get("phase") in ("after", "fail"):
                got.append(data)

        answers = Queue(
            f"{self.settings.prefix}.peer.{self.settings.host}.{uuid.uuid4().hex[:12]}",
            topology.events,
            routing_key=f"{host}.{body['op']}.*",
            exclusive=True,
            auto_delete=True,
            durable=False,
        )
        try:
            with connect(self.settings) as conn, conn.channel() as ch:
                consumer = Consumer(ch, queues=[answers], on_message=on_message, no_ack=True)
                consumer.consume()  # declares and binds it: no answer can come before
                self._publish(conn, host, body, request_id, correlation_id)
                end = time.monotonic() + timeout
                while not got and time.monotonic() < end:
                    try:
                        conn.drain_events(timeout=min(0.5, max(0.01, end - time.monotonic())))
                    except TimeoutError:
                        continue
        except OpError:
            raise
        except Exception as exc:  # the broker: the other host cannot be asked anything
            raise _broker_error(host, exc) from None
        if not got:
            raise OpError(
                "destination_unreachable",
                f"the worker of host {host} did not answer {body['op']} within {timeout:g}s",
                "timeout",
            )
        return got[0]

    def _publish(
        self,
        conn: Any,
        host: str,
        body: dict[str, Any],
        request_id: str,
        correlation_id: str | None,
    ) -> None:
        topology = Topology.from_settings(self.settings, host)
        try:
            publish_op(
                conn,
                topology,
                body,
                request_id=request_id,
                correlation_id=correlation_id,
                user_id=broker_user(self.settings),  # the peer's allowed_publishers checks it
                headers=tracing.outgoing(),  # the other host's spans join this request's trace
            )
        except NoWorkerQueue as exc:
            raise OpError("destination_unreachable", str(exc), "validation") from None
        log.info("peer.sent", peer=host, op=body["op"], request_id=request_id)


def _broker_error(host: str, exc: Exception) -> OpError:
    return OpError(
        "destination_unreachable",
        f"the broker failed while reaching the worker of host {host}: {exc!r}"[:1000],
        "internal",
        transient=True,
    )
