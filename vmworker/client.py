"""A client for control planes: submit operations to hosts' workers and get their outcomes,
watch events, replay messages (docs/client.md).

`Client` is synchronous and single-threaded: every broker read happens in the thread that
waits (`Request.result`, iterating a `Watch`, `Client.poll`). `AsyncClient` (vmworker/aio.py,
importable from here) runs one `Client` in a thread of its own for asyncio programs. The handles
it gives (`Request`, `Watch`, `Event`) and the errors they raise are in vmworker/handles.py, the
encoding of a message's body and headers in vmworker/encode.py; all are importable from here.

Each client has one exclusive, auto-deleted queue `<prefix>.events.tap.client-<id>` on the
events exchange. Before a message is published, the queue is bound to the keys its events will
carry (`<host>.<op>.*`), so its `before`, `progress` and terminal event cannot pass unseen.
After a lost connection the client reconnects, declares the queue and its bindings again, and
reads the `<prefix>.events.log` stream from shortly before the loss, so events published while
it was away still reach their handles and watches (each event once: events are told apart by
their `id`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from kombu import Connection, Consumer, Producer, Queue
from kombu.message import Message

from handlers.message import OpMessage
from vmworker.encode import dump_message, message_body, op_of, trace_headers
from vmworker.handles import (
    Event,
    InvalidMessage,
    OperationFailed,
    Request,
    RequestTimeout,
    Watch,
)
from vmworker.replay import (
    NoSuchQueue,
    Planned,
    Selection,
    from_ops_log,
    replay_headers,
    take_queued,
)
from worker.config import Settings
from worker.publish import NoWorkerQueue, require_host_queue
from worker.topology import Topology, stream

if TYPE_CHECKING:
    from vmworker.aio import AsyncClient, AsyncRequest, AsyncWatch

__all__ = [
    "AsyncClient",
    "AsyncRequest",
    "AsyncWatch",
    "Client",
    "Event",
    "InvalidMessage",
    "NoSuchQueue",
    "NoWorkerQueue",
    "OperationFailed",
    "Planned",
    "Request",
    "RequestTimeout",
    "Selection",
    "Watch",
]

log = structlog.get_logger()

_SEEN_MAX = 100_000  # event ids remembered, to give each event once across a reconnect
_RECOVER_MARGIN = timedelta(seconds=5)  # the events log is read from this long before a loss


class Client:
    """A control plane's connection to the workers (docs/client.md).

    `Client(broker, prefix=...)`, or `Client(settings=...)` (the same settings and VMWORKER_*
    variables as the `vmworker` command), or `Client(connection=...)` to use a kombu connection
    of one's own (it is not closed by `close()`). Use one client per thread.
    """

    def __init__(
        self,
        broker: str | None = None,
        *,
        prefix: str | None = None,
        settings: Settings | None = None,
        connection: Connection | None = None,
        user_id: str | None = None,
        heartbeat: int | None = None,
        reconnect_retries: int | None = 30,
    ) -> None:
        if settings is None:
            kw: dict[str, Any] = {}
            if broker is not None:
                kw["broker"] = broker
            if prefix is not None:
                kw["prefix"] = prefix
            settings = Settings(**kw)
        elif prefix is not None:
            settings = settings.model_copy(update={"prefix": prefix})
        self.settings = settings
        self.prefix = settings.prefix
        # the shared exchanges and streams are used, never declared (`vmworker broker setup`)
        self.topology = Topology(settings.prefix, "-", passive=True)
        self.reconnect_retries = reconnect_retries
        self.reconnects = 0
        self.recovered = 0  # events read from the events log after a reconnect
        self._own = connection is None
        if connection is None:
            from worker.amqp import connect

            hb = settings.amqp_heartbeat if heartbeat is None else heartbeat
            connection = connect(settings, heartbeat=hb)
        elif not connection.connected:
            connection.transport_options = {
                "confirm_publish": True,
                **(connection.transport_options or {}),
            }
        self.conn: Connection = connection
        self.user_id = user_id
        self.queue_name = f"{self.prefix}.events.tap.client-{uuid.uuid4().hex[:12]}"
        self._keys: set[str] = set()
        self._requests: dict[str, list[Request]] = {}  # by request id: handles waiting
        self._watches: list[Watch] = []
        self._seen: set[str] = set()
        self._seen_order: collections.deque[str] = collections.deque()
        self._ch: Any = None
        self._pub: Any = None
        self._consumer: Consumer | None = None
        self._healthy_at = datetime.now(UTC)
        self.conn.ensure_connection(max_retries=reconnect_retries)
        if not (self.conn.transport_options or {}).get("confirm_publish"):
            raise ValueError("the connection must have publisher confirms (confirm_publish)")
        self._declare()

    # -- life
    def close(self) -> None:
        """Stop consuming and drop the client's queue (closes the connection if it made it)."""
        for w in list(self._watches):
            w.close()
        with contextlib.suppress(Exception):
            if self._consumer is not None:
                self._consumer.cancel()
        for ch in (self._ch, self._pub):
            with contextlib.suppress(Exception):
                if ch is not None:
                    ch.close()
        self._ch = self._pub = self._consumer = None
        if self._own:
            self.conn.release()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- operations
    def message(
        self,
        op: str,
        vm: Mapping[str, Any],
        params: Mapping[str, Any] | None = None,
        custom: Mapping[str, str] | None = None,
    ) -> OpMessage:
        """The typed message (the op's pydantic model); InvalidMessage if the worker would
        refuse it."""
        body = message_body(op, vm, params, custom)
        return self._parse(json.dumps(body).encode())

    def submit(
        self,
        host: str,
        op: str | OpMessage | Mapping[str, Any] | bytes,
        vm: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        custom: Mapping[str, str] | None = None,
        request_id: str | None = None,
        correlation_id: str | None = None,
        deadline: datetime | timedelta | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
        headers: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        check_queue: bool = True,
        validate: bool = True,
    ) -> Request:
        """Publish one operation to `host` (confirmed by the broker) and return its handle.

        `op` is an op name (with `vm`, `params`, `custom`), a typed message (`message()`, or
        any model of `OP_MODELS`), a body as a dict, or raw bytes (sent as they are, with
        `validate=False`). The message is checked with the worker's own models first
        (InvalidMessage, nothing sent). NoWorkerQueue, nothing sent, if `host` has no queue."""
        raw = self._encode(op, vm, params, custom, validate=validate)
        request_id = request_id or str(uuid.uuid4())
        hdrs = dict(headers or {})
        if deadline is not None:
            if isinstance(deadline, timedelta):
                deadline = datetime.now(UTC) + deadline
            hdrs["x-deadline"] = deadline.astimezone(UTC).isoformat()
        hdrs.update(trace_headers(traceparent, tracestate))
        op_name = op_of(raw)
        req = Request(self, request_id, host, op_name, correlation_id)
        self._retry(lambda: self._send(req, raw, hdrs, user_id, check_queue))
        return req

    def forget(self, request: Request) -> None:
        """Stop tracking a request that will not be waited for any more."""
        self._untrack(request)

    def _untrack(self, request: Request) -> None:
        waiting = self._requests.get(request.request_id, [])
        if request in waiting:
            waiting.remove(request)
        if not waiting:
            self._requests.pop(request.request_id, None)

    def watch(
        self,
        host: str | None = None,
        vm: str | None = None,
        *,
        keys: list[str] | None = None,
        idle: float | None = None,
        sink: Callable[[Event], None] | None = None,
    ) -> Watch:
        """Events of `host` and/or of the VM with uuid `vm` (all hosts' events with neither),
        from now on. `keys` binds those routing keys instead (`<host>.host.*`, ...). The queue
        is bound before this returns."""
        w = Watch(self, host, vm, idle, sink, keys)
        wanted = keys or [f"{host}.#" if host else "#"]
        self._retry(lambda: self._bind(*wanted))
        self._watches.append(w)
        return w

    def replay(
        self,
        selection: Selection | None = None,
        *,
        request_ids: tuple[str, ...] | list[str] = (),
        vm: str | None = None,
        op: str | None = None,
        host: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        every: bool = False,
        from_dead: str | None = None,
        from_queue: str | None = None,
        as_new: bool | None = None,
        to_host: str | None = None,
        dry_run: bool = False,
        idle: float = 1.0,
    ) -> list[Planned]:
        """Publish chosen operation messages again (docs/operations.md, Replay); each sent one
        has its handle in `.request`. The criteria (or a `Selection`) must all hold; `every`
        takes every message of the source. From the ops log by default, `from_dead=HOST` from
        its dead-letter queue, `from_queue=HOST` from its operation queue. Original ids by
        default (new ones with `x-replay-of` from a dead queue, or with `as_new=True`). Nothing
        is sent if a target host has no queue (NoWorkerQueue); what a queue held and was not
        sent goes back to it."""
        sel = selection or Selection(tuple(request_ids), vm, op, host, since, until)
        if sel.empty and not every:
            raise ValueError("choose messages (request_ids, vm, op, host, since, until) or every")
        if from_dead and from_queue:
            raise ValueError("from_dead and from_queue: one source at a time")
        new_ids = as_new if as_new is not None else from_dead is not None
        return self._replay(sel, from_dead or from_queue, bool(from_dead), new_ids, to_host,
                            dry_run, idle)  # fmt: skip

    def poll(self, timeout: float = 0.0) -> None:
        """Read what the broker has sent (waiting at most `timeout` seconds for something) and
        hand it to the requests and watches; reconnects if the connection was lost."""
        try:
            if self.conn.heartbeat:
                self.conn.heartbeat_check()
            self.conn.drain_events(timeout=timeout)
            self._healthy_at = datetime.now(UTC)
        except TimeoutError:  # nothing came (an OSError: before the connection errors)
            self._healthy_at = datetime.now(UTC)
        except self.conn.connection_errors as exc:
            self._revive(exc)

    # -- inside
    def _replay(
        self,
        sel: Selection,
        source: str | None,
        dead: bool,
        new_ids: bool,
        to_host: str | None,
        dry_run: bool,
        idle: float,
    ) -> list[Planned]:
        rest: list[Message] = []
        conn, topo = self.conn, self.topology
        if source:
            planned, rest = take_queued(
                conn, topo, source, sel, as_new=new_ids, to_host=to_host, dead=dead
            )
        else:
            planned = from_ops_log(conn, topo, sel, as_new=new_ids, to_host=to_host, idle=idle)
        try:
            if dry_run or not planned:
                rest += [p.raw for p in planned if p.raw is not None]
                return planned
            try:  # every target first: nothing is sent if one of them has no queue
                for target in sorted({p.target for p in planned}):
                    require_host_queue(conn, topo, target)
            except NoWorkerQueue:
                rest += [p.raw for p in planned if p.raw is not None]
                raise
            for p in planned:
                self.send_replay(p)  # confirmed
                if p.raw is not None:
                    p.raw.ack()
        finally:
            for raw in rest:  # not chosen (or a dry run): back to its queue
                raw.reject(requeue=True)
        return planned

    def send_replay(self, p: Planned) -> None:
        """Publish one planned replay (confirmed); its handle goes in `p.request`."""
        m = p.message
        replay_of = m.message_id if p.new_id != m.message_id else None
        user = None
        had_user = m.properties.get("user_id") or m.headers.get("x-original-user-id")
        if had_user and self.conn.userid:  # the broker checks it against this connection
            user = str(self.conn.userid)
        req = Request(self, p.new_id, p.target, m.op, m.correlation_id)
        self._send(
            req,
            m.body,
            replay_headers(m, replay_of=replay_of),
            user,
            check_queue=False,  # checked for every target first
            content_type=m.properties.get("content_type"),
            content_encoding=m.properties.get("content_encoding"),
        )
        p.request, p.sent = req, True

    def _parse(self, raw: bytes) -> OpMessage:
        from worker.errors import OpError
        from worker.messages import parse_operation

        try:
            return parse_operation(raw, max_bytes=self.settings.max_body_bytes)
        except OpError as exc:
            raise InvalidMessage(f"invalid message, nothing sent: {exc.message}") from None

    def _encode(
        self,
        op: str | OpMessage | Mapping[str, Any] | bytes,
        vm: Mapping[str, Any] | None,
        params: Mapping[str, Any] | None,
        custom: Mapping[str, str] | None,
        *,
        validate: bool,
    ) -> bytes:
        if isinstance(op, bytes):
            raw = op
        elif isinstance(op, OpMessage):
            raw = json.dumps(dump_message(op)).encode()
        elif isinstance(op, Mapping):
            raw = json.dumps(dict(op)).encode()
        else:
            raw = json.dumps(message_body(op, vm or {}, params, custom)).encode()
        if validate:
            self._parse(raw)
        return raw

    def _retry(self, fn: Callable[[], Any]) -> Any:
        """`fn`, once more after a reconnect if the connection was lost meanwhile."""
        try:
            return fn()
        except self.conn.connection_errors as exc:
            if isinstance(exc, TimeoutError) and self.conn.connected:
                raise
            self._revive(exc)
            return fn()

    def _send(
        self,
        req: Request,
        raw: bytes,
        headers: dict[str, Any],
        user_id: str | None,
        check_queue: bool,
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
    ) -> None:
        host = req.host
        if check_queue:
            require_host_queue(self.conn, self.topology, host)
        # bound before publishing: none of its events can pass unseen
        self._bind(f"{host}.{req.op}.*" if req.op else f"{host}.*.*", f"{host}.invalid.fail")
        # before publishing: its events may come while the confirm does
        self._requests.setdefault(req.request_id, []).append(req)
        user = user_id or self.user_id or self._default_user()
        props: dict[str, Any] = {"user_id": user} if user else {}
        if self._pub is None:
            self._pub = self.conn.channel()
        returned: list[Any] = []
        try:
            # a mandatory message no queue takes comes back (basic.return) before its ack
            Producer(self._pub, on_return=lambda *a: returned.append(a)).publish(
                raw,
                exchange=self.topology.ops.name,
                routing_key=host,
                mandatory=True,
                content_type=content_type or "application/json",
                content_encoding=content_encoding or "utf-8",
                delivery_mode=2,
                message_id=req.request_id,
                correlation_id=req.correlation_id,
                timestamp=int(time.time()),
                headers=headers,
                retry=False,
                **props,
            )
        except BaseException:
            self._untrack(req)
            pub, self._pub = self._pub, None  # a fresh channel for the next publish
            with contextlib.suppress(Exception):
                pub.close()
            raise
        finally:
            with contextlib.suppress(Exception):
                self._pub.events["basic_return"].clear()
        if returned:  # no queue took it, not even the ops log stream
            self._untrack(req)
            raise NoWorkerQueue(host, Topology(self.prefix, host).host_queue.name)

    def _default_user(self) -> str | None:
        if self.settings.login_method == "EXTERNAL":
            return None  # the name comes from the client certificate
        return str(self.conn.userid) if self.conn.userid else None

    def _declare(self) -> None:
        """The client's queue, its bindings and its consumer (again after a reconnect)."""
        self._ch = self.conn.channel()
        q = Queue(self.queue_name, exclusive=True, auto_delete=True, durable=False)
        q.bind(self._ch).declare()
        for key in self._keys:
            self._ch.queue_bind(self.queue_name, self.topology.events.name, key)
        self._consumer = Consumer(
            self._ch, queues=[q], on_message=self._on_message, no_ack=True, auto_declare=False
        )
        self._consumer.consume()

    def _bind(self, *keys: str) -> None:
        for key in keys:
            if key not in self._keys:
                self._ch.queue_bind(self.queue_name, self.topology.events.name, key)
                self._keys.add(key)

    def _on_message(self, message: Message) -> None:
        try:
            ev = json.loads(message.body)
        except ValueError:
            return
        if isinstance(ev, dict):
            self._dispatch(ev, message.delivery_info.get("routing_key"))

    def _dispatch(self, doc: dict[str, Any], routing_key: str | None) -> None:
        from worker.subscribe import vouched

        if not vouched(doc, routing_key):
            log.warning("event.forged", routing_key=routing_key, source=doc.get("source"))
            return
        eid = doc.get("id")
        if isinstance(eid, str):
            if eid in self._seen:
                return
            self._seen.add(eid)
            self._seen_order.append(eid)
            if len(self._seen_order) > _SEEN_MAX:
                self._seen.discard(self._seen_order.popleft())
        ev = Event(doc)
        rid = ev.request_id
        for req in list(self._requests.get(rid, [])) if rid else []:
            req._feed(ev)  # each handle of the id: a resubmit may be waiting beside the first
            if req.terminal is not None:
                self._untrack(req)
        for w in list(self._watches):
            if w.matches(ev, routing_key):
                w._feed(ev)

    def _revive(self, exc: BaseException) -> None:
        """Reconnect, declare the queue and its bindings again, and read what was missed from
        the events log."""
        lost = self._healthy_at
        log.warning("client.reconnecting", error=repr(exc)[:300])
        self._ch = self._pub = self._consumer = None
        with contextlib.suppress(Exception):
            self.conn.collect()
        self.conn.ensure_connection(
            max_retries=self.reconnect_retries, interval_start=0.2, interval_step=0.5,
            interval_max=2.0,
        )  # fmt: skip
        self._declare()
        self.reconnects += 1
        if self._requests or self._watches:
            self._recover(lost - _RECOVER_MARGIN)
        log.info("client.reconnected", reconnects=self.reconnects)

    def _recover(self, since: datetime) -> None:
        from worker.history import read_messages

        t = self.topology
        q = stream(t.events_log.name, t.events, t.events_max_age, since)
        try:
            for m in read_messages(self.conn, q, idle=0.5):
                before = len(self._seen)
                self._on_message(m)
                self.recovered += len(self._seen) - before
        except self.conn.channel_errors as exc:  # no events log: what passed is not known
            log.warning("client.recover_failed", error=repr(exc)[:300])


def __getattr__(name: str) -> Any:
    if name in ("AsyncClient", "AsyncRequest", "AsyncWatch"):
        from vmworker import aio

        return getattr(aio, name)
    raise AttributeError(name)
