"""`AsyncClient`: the client for asyncio programs (docs/client.md).

One `Client` runs in a thread of its own, which owns the connection (kombu connections are not
thread-safe): calls are handed to it through a queue, and its events come back to the event
loop with `loop.call_soon_threadsafe`. The thread reads the broker in slices of
`poll_interval` seconds and runs the calls queued in between, so a call waits at most that long
before it starts. This keeps one implementation of confirms, bindings, reconnects and replay
for both kinds of programs, on the same kombu/py-amqp stack as the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from vmworker.client import (
    Client,
    Event,
    OperationFailed,
    Planned,
    Request,
    RequestTimeout,
    Watch,
)

T = TypeVar("T")
_END = object()


class AsyncRequest:
    """The asyncio handle of one submitted message: `await result(timeout)`, and
    `async for ev in events()` for its events as they come (`before`, `progress`, ...)."""

    def __init__(self, request_id: str, host: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.host = host
        self.events: list[Event] = []
        self.terminal: Event | None = None
        self._done: asyncio.Future[Event] = loop.create_future()
        self._queues: list[asyncio.Queue[Any]] = []

    def __repr__(self) -> str:
        state = self.terminal.phase if self.terminal else "pending"
        return f"<AsyncRequest {self.request_id} on {self.host}: {state}>"

    def _feed(self, ev: Event) -> None:  # in the event loop
        if self.terminal is not None:
            return
        self.events.append(ev)
        for q in self._queues:
            q.put_nowait(ev)
        if ev.terminal:
            self.terminal = ev
            self._done.set_result(ev)
            for q in self._queues:
                q.put_nowait(_END)

    def done(self) -> bool:
        return self.terminal is not None

    async def result(self, timeout: float | None = None) -> Event:
        """The terminal `after` event; OperationFailed on `fail`; RequestTimeout after
        `timeout` seconds, leaving the request as it is (await again to keep waiting)."""
        try:
            ev = await asyncio.wait_for(asyncio.shield(self._done), timeout)
        except TimeoutError:
            raise RequestTimeout(self.request_id, timeout) from None
        if ev.phase == "fail":
            raise OperationFailed(ev)
        return ev

    async def stream(self) -> AsyncIterator[Event]:
        """Every event of the request, the ones already seen first, up to the terminal one."""
        q: asyncio.Queue[Any] = asyncio.Queue()
        for ev in self.events:
            q.put_nowait(ev)
        if self.terminal is not None:
            q.put_nowait(_END)
        else:
            self._queues.append(q)
        try:
            while (item := await q.get()) is not _END:
                yield item
        finally:
            with contextlib.suppress(ValueError):
                self._queues.remove(q)


class AsyncWatch:
    """`async for ev in watch`: events of a host and/or VM from when `watch()` returned."""

    def __init__(self, client: AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._watch: Watch | None = None

    def _sink(self, ev: Event) -> None:  # in the client's thread
        self._loop.call_soon_threadsafe(self._queue.put_nowait, ev)

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> Event:
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        return item

    async def close(self) -> None:
        w = self._watch
        if w is not None:
            await self._client._call(w.close)
        self._queue.put_nowait(_END)

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncClient:
    """The asyncio client: `async with AsyncClient(broker, prefix=...) as client:`. Takes the
    same arguments as `Client` (not `connection`: the thread makes its own)."""

    def __init__(self, broker: str | None = None, *, poll_interval: float = 0.05, **kw: Any):
        self._args = (broker, kw)
        self.poll_interval = poll_interval
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # why the client's thread stopped (reconnecting gave up): raised by every later call
        self.error: Exception | None = None

    @property
    def client(self) -> Client:
        """The sync client its thread runs (to read its settings; call it only through
        `AsyncClient`'s methods)."""
        assert self._client is not None, "not started: use `async with` or `await start()`"
        return self._client

    async def start(self) -> AsyncClient:
        self._loop = asyncio.get_running_loop()
        started: Future[Client] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="vmworker-client", daemon=True
        )
        self._thread.start()
        self._client = await asyncio.wrap_future(started)
        return self

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def __aenter__(self) -> AsyncClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _run(self, started: Future[Client]) -> None:
        broker, kw = self._args
        try:
            client = Client(broker, **kw)
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(client)
        try:
            while not self._stop.is_set() and self.error is None:
                while True:
                    try:
                        fn, fut = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    if fut.set_running_or_notify_cancel():
                        try:
                            fut.set_result(fn())
                        except BaseException as exc:
                            fut.set_exception(exc)
                try:
                    client.poll(self.poll_interval)
                except Exception as exc:  # reconnecting gave up: the client is done
                    self.error = exc
        finally:
            client.close()
            while True:  # calls that came too late
                try:
                    _, fut = self._calls.get_nowait()
                except queue.Empty:
                    break
                if self.error is not None and fut.set_running_or_notify_cancel():
                    fut.set_exception(self.error)
                else:
                    fut.cancel()

    async def _call(self, fn: Callable[[], T]) -> T:
        """`fn()` run in the client's thread."""
        if self.error is not None:
            raise self.error
        if self._thread is None or self._stop.is_set():
            raise RuntimeError("the client is not running (use `async with AsyncClient(...)`)")
        fut: Future[T] = Future()
        self._calls.put((fn, fut))
        return await asyncio.wrap_future(fut)

    def _bridge(self, areq: AsyncRequest) -> Callable[[Event], None]:
        loop = self._loop
        assert loop is not None

        def deliver(ev: Event) -> None:  # in the client's thread
            loop.call_soon_threadsafe(areq._feed, ev)

        return deliver

    async def submit(self, host: str, op: Any, vm: Any = None, **kw: Any) -> AsyncRequest:
        """`Client.submit` (same arguments), confirmed by the broker when it returns."""
        assert self._loop is not None
        request_id = kw.pop("request_id", None) or str(uuid.uuid4())
        areq = AsyncRequest(request_id, host, self._loop)
        deliver = self._bridge(areq)

        def submit() -> Request:
            req = self.client.submit(host, op, vm, request_id=request_id, **kw)
            req.subscribe(deliver)
            return req

        await self._call(submit)
        return areq

    async def message(self, op: str, vm: Any, params: Any = None, custom: Any = None) -> Any:
        """`Client.message`: the typed message."""
        return await self._call(lambda: self.client.message(op, vm, params, custom))

    async def watch(self, host: str | None = None, vm: str | None = None, **kw: Any) -> AsyncWatch:
        """`Client.watch`: an async iterator of events, bound when this returns."""
        assert self._loop is not None
        aw = AsyncWatch(self, self._loop)

        def watch() -> Watch:
            return self.client.watch(host, vm, sink=aw._sink, **kw)

        aw._watch = await self._call(watch)
        return aw

    async def replay(self, *args: Any, **kw: Any) -> list[Planned]:
        """`Client.replay`; each sent message's `.request` is an AsyncRequest."""
        assert self._loop is not None
        loop = self._loop

        def replay() -> list[tuple[Planned, AsyncRequest | None]]:
            out: list[tuple[Planned, AsyncRequest | None]] = []
            for p in self.client.replay(*args, **kw):
                areq = None
                if p.request is not None:
                    areq = AsyncRequest(p.new_id, p.target, loop)
                    p.request.subscribe(self._bridge(areq))
                out.append((p, areq))
            return out

        planned = []
        for p, areq in await self._call(replay):
            p.request = areq  # type: ignore[assignment]
            planned.append(p)
        return planned
