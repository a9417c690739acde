"""Helpers for integration tests: a real RabbitMQ (each test under its own name prefix, deleted
afterwards), a worker run in a thread or as a real process, and an event tap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import libvirt
from kombu import Connection, Consumer, Queue

from worker.config import Settings
from worker.publish import build_body, publish_op
from worker.topology import Topology

BROKER = os.environ.get("VMWORKER_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
REPO = Path(__file__).resolve().parent.parent
QEMU_URI = "qemu:///system"


def unique(tag: str = "t") -> str:
    return f"{tag}{uuid.uuid4().hex[:10]}"


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll `pred` until it returns something true (returned), at most `timeout` seconds;
    then its last answer, for a test whose own assert says more than a timeout would."""
    end = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() >= end:
            return got
        time.sleep(interval)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `pred` until it returns something true (returned), or fail after `timeout` s."""
    got = wait_until(pred, timeout, interval)
    if not got:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return got


def wait_depth(conn: Connection, name: str, n: int, timeout: float = 10.0) -> None:
    """Until queue `name` holds `n` ready messages: dead-lettering and requeues settle later."""
    wait_for(lambda: queue_depth(conn, name) == n, timeout, f"{n} message(s) in {name}")


def broker_conn() -> Connection:
    return Connection(BROKER, transport_options={"confirm_publish": True})


def queue_depth(conn: Connection, name: str) -> int:
    with conn.channel() as ch:
        return int(ch.queue_declare(name, passive=True).message_count)


def drain_queue(conn: Connection, name: str, timeout: float = 10.0, expect: int = 1) -> list[Any]:
    """Take every message out of a queue (acked), once at least `expect` came (dead letters
    arrive a moment after the fail event) or after `timeout`; returns kombu messages."""
    got: list[Any] = []
    with conn.channel() as ch:
        c = Consumer(ch, queues=[Queue(name, no_declare=True)], on_message=got.append, no_ack=True)
        c.consume()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                if len(got) >= expect:
                    break
        c.cancel()
    return got


def read_stream(conn: Connection, name: str, timeout: float = 3.0) -> list[Any]:
    """Every message of a stream queue, from its first offset."""
    got: list[Any] = []
    q = Queue(name, no_declare=True, consumer_arguments={"x-stream-offset": "first"})
    with conn.channel() as ch:
        ch.basic_qos(0, 1000, False)

        def on_message(m: Any) -> None:
            got.append(m)
            m.ack()

        c = Consumer(ch, queues=[q], on_message=on_message, no_ack=False)
        c.consume()
        end = time.monotonic() + timeout
        idle = 0
        while time.monotonic() < end and idle < 3:
            n = len(got)
            with suppress(TimeoutError):
                conn.drain_events(timeout=0.3)
            idle = idle + 1 if len(got) == n else 0
    return got


def delete_topology(prefix: str, hosts: list[str]) -> None:
    """Delete every queue and exchange a test made under `prefix`."""
    with broker_conn() as conn, conn.channel() as ch:
        for h in hosts:
            for q in (f"{prefix}.ops.{h}", f"{prefix}.ops.{h}.dead"):
                with suppress(Exception):
                    ch.queue_delete(q)
        for q in (f"{prefix}.ops.log", f"{prefix}.events.log"):
            with suppress(Exception):
                ch.queue_delete(q)
        for ex in (f"{prefix}.ops", f"{prefix}.events", f"{prefix}.ops.dlx"):
            with suppress(Exception):
                ch.exchange_delete(ex)


@cache
def _event_validator() -> Any:
    """Made on first use: a process that checks no event (a unit test run) does not pay for it."""
    from tests.schemagen import validator
    from worker.eventschema import event_schema

    return validator(event_schema())


def event_errors(ev: dict[str, Any]) -> list[str]:
    """Why `ev` is not an event as `vmworker schema --events` describes it (empty: it is)."""
    errors = _event_validator().iter_errors(ev)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


@dataclass
class EventTap:
    """A private queue bound to every event of a prefix, consumed in a background thread.
    Every event is checked against the events' JSON Schema; `invalid` holds those that are not
    (the `tap` fixture fails the test on any)."""

    topology: Topology
    events: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[tuple[dict[str, Any], list[str]]] = field(default_factory=list)
    _cv: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> EventTap:
        self._conn = broker_conn()
        self._queue = Queue(
            f"{self.topology.prefix}.tap.{uuid.uuid4().hex[:8]}",
            self.topology.events,
            routing_key="#",
            exclusive=True,
            auto_delete=True,
            durable=False,
        )
        self.topology.declare_shared(self._conn)
        self._queue.bind(self._conn.default_channel).declare()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        def on_message(m: Any) -> None:
            ev = json.loads(m.body)
            errors = event_errors(ev)
            ev["_routing_key"] = m.delivery_info.get("routing_key")
            ev["_received"] = time.time()  # wall clock, as the event's own `time`
            with self._cv:
                if errors:
                    self.invalid.append((ev, errors))
                self.events.append(ev)
                self._cv.notify_all()

        ch = self._conn.default_channel
        Consumer(ch, queues=[self._queue], on_message=on_message, no_ack=True).consume()
        while not self._stop.is_set():
            with suppress(TimeoutError):
                self._conn.drain_events(timeout=0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with suppress(Exception):
            self._conn.release()

    def of(self, request_id: str) -> list[dict[str, Any]]:
        with self._cv:
            return [e for e in self.events if e.get("requestid") == request_id]

    def terminal(self, request_id: str, *, include_duplicates: bool = False) -> list[dict]:
        return [
            e
            for e in self.of(request_id)
            if e["data"].get("phase") in ("after", "fail")
            and (include_duplicates or not e["data"].get("duplicate"))
        ]

    def wait(self, pred: Callable[[], Any], timeout: float = 20.0) -> Any:
        end = time.monotonic() + timeout
        with self._cv:
            while True:
                got = pred()
                if got:
                    return got
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s; {len(self.events)} events")
                self._cv.wait(min(left, 0.2))

    def wait_terminal(self, request_id: str, timeout: float = 20.0) -> dict[str, Any]:
        return self.wait(lambda: next(iter(self.terminal(request_id) or []), None), timeout)


@dataclass
class Env:
    """One test's world: a prefix, a host id, settings, and a connection to publish with."""

    prefix: str
    host: str
    state_dir: Path
    hooks_root: Path
    libvirt_uri: str = "test:///default"
    extra: dict[str, Any] = field(default_factory=dict)
    other_hosts: list[str] = field(default_factory=list)  # also cleaned up

    def settings(self, **kw: Any) -> Settings:
        base: dict[str, Any] = dict(
            host=self.host,
            broker=BROKER,
            prefix=self.prefix,
            libvirt_uri=self.libvirt_uri,
            state_dir=self.state_dir,
            hooks_root=self.hooks_root,
            hook_timeout=10,
            heartbeat_interval=3600,
        )
        base.update(self.extra)
        base.update(kw)
        return Settings(**base)

    @property
    def topology(self) -> Topology:
        return Topology(self.prefix, self.host)

    def publish(
        self,
        op: str,
        vm: dict[str, Any] | None = None,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        custom: dict[str, str] | None = None,
        **kw: Any,
    ) -> str:
        raw = body if body is not None else build_body(op, vm or {}, params, custom)
        with broker_conn() as conn:
            return publish_op(conn, self.topology, raw, **kw)

    def env_vars(self, **kw: Any) -> dict[str, str]:
        """The same settings as VMWORKER_* variables, for a worker process."""
        env = dict(os.environ)
        for k, v in {**self.settings(**kw).model_dump(mode="json")}.items():
            if v is None or k == "retry":
                continue
            env[f"VMWORKER_{k.upper()}"] = json.dumps(v) if isinstance(v, list | dict) else str(v)
        return env


class ThreadWorker:
    """The real Service, in a thread of the test process (test:///default is per process)."""

    def __init__(self, settings: Settings, **kw: Any) -> None:
        from worker.service import Service

        self.service = Service(settings, **kw)
        self.thread = threading.Thread(target=self.service.run, daemon=True)

    def start(self, timeout: float = 20.0) -> ThreadWorker:
        self.thread.start()
        assert self.service.ready.wait(timeout), "worker did not start consuming"
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.service.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"


class ProcessWorker:
    """`vmworker run` as a real process (for kill -9 and signals)."""

    def __init__(
        self, env: Env, log_path: Path, *, args: tuple[str, ...] = (), **settings: Any
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.args = args  # flags of `vmworker run`
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProcessWorker:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop/kill
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", *self.args],
            env=self.env.env_vars(**self.settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_log("consuming", 30)
        return self

    def wait_log(self, text: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.log_path.read_text(errors="replace"):
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} in worker log after {timeout}s")

    def kill9(self) -> None:
        assert self.proc is not None
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._log.close()
        return int(self.proc.returncode)


@contextmanager
def libvirt_cleanup(uri: str) -> Iterator[list[str]]:
    """Yields a list; every uuid appended is destroyed and undefined at the end."""
    uuids: list[str] = []
    try:
        yield uuids
    finally:
        conn = libvirt.open(uri)
        for u in uuids:
            with suppress(libvirt.libvirtError):
                dom = conn.lookupByUUIDString(u)
                with suppress(libvirt.libvirtError):
                    dom.destroy()
                with suppress(libvirt.libvirtError):
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                with suppress(libvirt.libvirtError):
                    dom.undefine()
        conn.close()


def small_vm(name_tag: str = "vm", **spec: Any) -> dict[str, Any]:
    """The smallest spec a real QEMU boots (no disk): 64 MiB, 1 vcpu, serial pty, VNC local;
    `spec` on top (`memory_mib=128`, `disks=[...]`)."""
    return {
        "uuid": str(uuid.uuid4()),
        "name": unique(f"vmw-test-{name_tag}-"),
        "vcpus": 1,
        "memory_mib": 64,
        **spec,
    }


def write_hook(root: Path, point: str, name: str, text: str, mode: int = 0o755) -> Path:
    """Hook script `name` of `point`'s chain under hooks root `root` (its directory made, mode
    0755 as the engine wants it), holding `text`, with `mode`."""
    d = root / point
    d.mkdir(mode=0o755, exist_ok=True)
    d.chmod(0o755)
    path = d / name
    path.write_text(text)
    path.chmod(mode)
    return path
