"""What every benchmark shares: names, statistics, an event tap, publishers and a worker process
(what is measured of processes and the machine is in bench/meter.py).

Each benchmark runs under its own unique name prefix (never the default `vm.*` names) and
deletes every queue and exchange it declared.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kombu import Connection, Consumer, Producer, Queue

from bench.meter import CpuMeter
from worker.topology import Topology

BROKER = os.environ.get("VMWORKER_BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
REPO = Path(__file__).resolve().parent.parent
TERMINAL = ("after", "fail")


def unique(tag: str) -> str:
    return f"{tag}{uuid.uuid4().hex[:10]}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    xs = sorted(values)
    k = max(1, math.ceil(p / 100.0 * len(xs)))
    return xs[k - 1]


def summary(values: Iterable[float], digits: int = 4) -> dict[str, Any]:
    """{median, min, max, runs} of one figure measured once per run."""
    xs = [float(v) for v in values]
    if not xs:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {
        "median": round(statistics.median(xs), digits),
        "min": round(min(xs), digits),
        "max": round(max(xs), digits),
        "runs": [round(x, digits) for x in xs],
    }


def rate(times: Sequence[float]) -> float:
    """Steady-state rate of a burst: events between the first and the last, per second."""
    if len(times) < 2:
        return 0.0
    ts = sorted(times)
    span = ts[-1] - ts[0]
    return (len(ts) - 1) / span if span > 0 else 0.0


# -- VM specs and operation bodies ---------------------------------------------------------------
def vm_spec(tag: str = "bench") -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()),
        "name": unique(f"vmw-{tag}-"),
        "vcpus": 1,
        "memory_mib": 128,
    }


def start_body(spec: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"version": 1, "op": "start_vm", "vm": spec or vm_spec()}).encode()


def broker_conn(confirm: bool = True) -> Connection:
    return Connection(BROKER, transport_options={"confirm_publish": confirm})


class OpPublisher:
    """One connection and channel publishing operation messages the way a control plane does:
    persistent, with a message_id, confirmed by the broker before `publish` returns."""

    def __init__(self, exchange: Any, routing_key: str, *, confirm: bool = True) -> None:
        self.conn = broker_conn(confirm)
        self.conn.connect()
        self.producer = Producer(self.conn.channel())
        self.exchange = exchange
        self.routing_key = routing_key

    def publish(self, body: bytes, request_id: str | None = None) -> str:
        rid = request_id or str(uuid.uuid4())
        self.producer.publish(
            body,
            exchange=self.exchange,
            routing_key=self.routing_key,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            message_id=rid,
            timestamp=int(time.time()),
            retry=False,
            confirm_timeout=30,  # a confirm that never comes fails the run, never hangs it
        )
        return rid

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.release()


def prefill(exchange: Any, routing_key: str, queue: str, bodies: list[bytes]) -> list[str]:
    """Publish every body, each confirmed by the broker (a fill published without confirms
    once came up short of a quorum queue, and the run failed waiting for it), then wait until
    the queue reports them all."""
    pub = OpPublisher(exchange, routing_key)
    try:
        rids = [pub.publish(b) for b in bodies]
    finally:
        pub.close()
    wait_depth(queue, len(bodies))
    return rids


def queue_depth(name: str) -> int:
    with broker_conn() as conn, conn.channel() as ch:
        return int(ch.queue_declare(name, passive=True).message_count)


def wait_depth(name: str, n: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while queue_depth(name) < n:
        if time.monotonic() > end:
            raise RuntimeError(f"queue {name} holds {queue_depth(name)} messages, not {n}")
        time.sleep(0.05)


# -- the event tap ---------------------------------------------------------------------------
@dataclass
class Seen:
    at: float  # time.monotonic() when the tap got it
    routing_key: str
    request_id: str | None
    phase: str | None
    size: int
    error: Any = None


@dataclass
class EventTap:
    """A private queue bound to every key of an events exchange, consumed in a thread; it
    stamps each event with the time it arrived (same clock as the publishers)."""

    exchange: Any
    seen: list[Seen] = field(default_factory=list)
    _by_rid: dict[str, list[Seen]] = field(default_factory=dict)
    _terminal: dict[str, Seen] = field(default_factory=dict)  # the first terminal event per id
    _awaited: set[str] = field(default_factory=set)  # ids wait_all still waits for
    _cv: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> EventTap:
        self._conn = broker_conn(False)
        self._conn.connect()
        self._queue = Queue(
            unique(f"{self.exchange.name}.tap."),
            self.exchange,
            routing_key="#",
            exclusive=True,
            auto_delete=True,
            durable=False,
        )
        ch = self._conn.channel()
        self._queue.bind(ch).declare()
        self._consumer = Consumer(ch, queues=[self._queue], on_message=self._got, no_ack=True)
        self._consumer.consume()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tap")
        self._thread.start()
        return self

    def _got(self, m: Any) -> None:
        at = time.monotonic()
        body = m.body if isinstance(m.body, bytes) else m.body.encode()
        try:
            ev = json.loads(body)
            data = ev.get("data") or {}
        except ValueError:
            ev, data = {}, {}
        s = Seen(
            at,
            m.delivery_info.get("routing_key", ""),
            ev.get("requestid"),
            data.get("phase"),
            len(body),
            data.get("error"),
        )
        with self._cv:
            self.seen.append(s)
            rid = s.request_id
            if rid:
                self._by_rid.setdefault(rid, []).append(s)
                if s.phase in TERMINAL and rid not in self._terminal:
                    self._terminal[rid] = s
                    self._awaited.discard(rid)
            # wait_all is woken once, when its last id is in; closed loops at every event.
            # (The tap shares the machine with what it measures: it must cost next to nothing
            # per event, whatever the number of requests awaited.)
            if not self._awaited:
                self._cv.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self._conn.drain_events(timeout=0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self._conn.release()

    def terminal(self, rid: str) -> Seen | None:
        return self._terminal.get(rid)

    def wait_terminal(self, rid: str, timeout: float = 60.0) -> Seen:
        end = time.monotonic() + timeout
        with self._cv:
            while (got := self.terminal(rid)) is None:
                left = end - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no terminal event for {rid} after {timeout:g}s")
                self._cv.wait(min(left, 0.5))
        return got

    def wait_all(
        self,
        rids: Iterable[str],
        timeout: float = 600.0,
        check: Callable[[], None] | None = None,
    ) -> list[Seen]:
        """The terminal event of every request id (raises if one is missing by the timeout).
        `check` is called every half second meanwhile: it raises when waiting longer is
        pointless (a consumer exited)."""
        want = list(rids)
        end = time.monotonic() + timeout
        with self._cv:
            self._awaited = {r for r in want if r not in self._terminal}
            try:
                while self._awaited:
                    left = end - time.monotonic()
                    if left <= 0:
                        missing = len(self._awaited)
                        raise RuntimeError(
                            f"{missing} of {len(want)} terminal events missing after"
                            f" {timeout:g}s, e.g. {next(iter(self._awaited))}"
                        )
                    if check is not None:
                        check()
                    self._cv.wait(min(left, 0.5))
            finally:
                self._awaited = set()
            return [self._terminal[r] for r in want]

    def events_of(self, rid: str) -> list[Seen]:
        with self._cv:
            return list(self._by_rid.get(rid, ()))


def check_ok(seen: Iterable[Seen]) -> None:
    """Every terminal event an `after`: a benchmark of failures measures nothing."""
    bad = [s for s in seen if s.phase != "after"]
    if bad:
        raise RuntimeError(f"{len(bad)} operations failed, e.g. {bad[0].error}")


def closed_loop(pub: OpPublisher, tap: EventTap, bodies: Iterable[bytes]) -> list[float]:
    """One operation in flight at a time: seconds from publish (confirmed) to its terminal
    event, for each body."""
    out: list[float] = []
    for body in bodies:
        t0 = time.monotonic()
        rid = pub.publish(body)
        s = tap.wait_terminal(rid)
        if s.phase != "after":
            raise RuntimeError(f"operation failed: {s.error}")
        out.append(s.at - t0)
    return out


# -- SIGTERM and clean-up ----------------------------------------------------------------------
class _Sigterm:
    """SIGTERM ends a run as Ctrl-C does (SystemExit: every clean-up on the way out runs), but
    never inside a `deferred()` block: there it waits for the block's end. Starting a process
    and stopping one are such blocks, so a process is never started unknown to its `Process`,
    nor left half stopped."""

    depth = 0
    pending = False

    @classmethod
    def handle(cls, signum: int, _frame: Any) -> None:
        if cls.depth:
            cls.pending = True
            return
        raise SystemExit(128 + signum)

    @classmethod
    @contextlib.contextmanager
    def deferred(cls) -> Iterator[None]:
        cls.depth += 1
        try:
            yield
        finally:
            cls.depth -= 1
        if cls.pending and not cls.depth:
            cls.pending = False
            raise SystemExit(128 + signal.SIGTERM)


def exit_on_sigterm() -> None:
    """In the benchmark's main process: SIGTERM runs every clean-up, as Ctrl-C does."""
    signal.signal(signal.SIGTERM, _Sigterm.handle)


def delete_topology(
    prefix: str, hosts: Iterable[str], queues: Iterable[str] = (), exchanges: Iterable[str] = ()
) -> None:
    """Delete every queue and exchange a benchmark declared under `prefix`."""
    with _Sigterm.deferred(), broker_conn() as conn:
        names = [*queues]
        for h in hosts:
            t = Topology(prefix, h)
            names += [t.host_queue.name, t.dead_queue.name]
        names += [f"{prefix}.ops.log", f"{prefix}.events.log"]
        for q in names:
            with contextlib.suppress(Exception), conn.channel() as ch:
                ch.queue_delete(q)
        for ex in [f"{prefix}.ops", f"{prefix}.events", f"{prefix}.ops.dlx", *exchanges]:
            with contextlib.suppress(Exception), conn.channel() as ch:
                ch.exchange_delete(ex)


@contextlib.contextmanager
def topology(prefix: str, host: str) -> Iterator[Topology]:
    """The worker's own topology under a fresh prefix, declared, deleted afterwards."""
    topo = Topology(prefix, host)
    try:
        with broker_conn() as conn:
            topo.declare(conn)
        yield topo
    finally:
        delete_topology(prefix, [host])


# -- processes -------------------------------------------------------------------------------
class Process:
    """A benchmark's server process (a worker, a bare loop): its output goes to a log file;
    it is ready when `ready_text` appears there."""

    def __init__(
        self,
        argv: list[str],
        log_path: Path,
        env: dict[str, str],
        ready_text: str,
        cwd: Path = REPO,
    ) -> None:
        self.cwd = cwd  # `python -m` imports from here first
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.ready_text = ready_text
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Process:
        return self.spawn().wait_ready(timeout)

    def spawn(self) -> Process:
        """Start the process without waiting for it to be ready (several at once)."""
        with _Sigterm.deferred():
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> Process:
        assert self.proc is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.ready_text in self.log_path.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"{self.argv[:4]} exited: {self.tail()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.argv[:4]} not ready after {timeout:g}s: {self.tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_running(self) -> None:
        """Raises if the process has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"pid {self.proc.pid} exited ({self.proc.returncode})")

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None:
            return
        with _Sigterm.deferred():
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
            # whatever the process left in its session (fork servers, hook scripts)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._log.close()


def worker_process(
    log_path: Path,
    *,
    host: str,
    prefix: str,
    state_dir: Path,
    hooks_root: Path,
    libvirt_uri: str = "test:///default",
    pythonpath: Sequence[str] = (),
    cwd: Path = REPO,
    **settings: Any,
) -> Process:
    """`python -m worker run` with default settings but for the names and paths given; `cwd`:
    the checkout whose worker runs (`python -m` imports from there first)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMWORKER_")}
    values = {
        "host": host,
        "broker": BROKER,
        "prefix": prefix,
        "libvirt_uri": libvirt_uri,
        "state_dir": str(state_dir),
        "hooks_root": str(hooks_root),
        **settings,
    }
    for k, v in values.items():
        env[f"VMWORKER_{k.upper()}"] = str(v)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*pythonpath, env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    return Process(
        [sys.executable, "-m", "worker", "run"], log_path, env, '"worker.consuming"', cwd
    )


def hooks_root(base: Path) -> Path:
    """An empty hooks root a worker accepts (owned by us, not group/world-writable)."""
    root = base / "hooks"
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    return root


def in_process_settings(prefix: str, host: str, base: Path) -> Any:
    """The settings of a worker run in the benchmark's own process: test:///default, an empty
    hooks root and the journal under `base`."""
    from worker.config import Settings

    return Settings(
        host=host,
        broker=BROKER,
        prefix=prefix,
        libvirt_uri="test:///default",
        state_dir=base / "state",
        hooks_root=hooks_root(base),
    )


def write_hook(root: Path, point: str, name: str, text: str) -> Path:
    d = root / point
    d.mkdir(exist_ok=True)
    d.chmod(0o755)
    p = d / name
    p.write_text(text)
    p.chmod(0o755)
    return p


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def skipping(smoke: bool, why: str | None, needs: str, what: str) -> bool:
    """Whether `what` cannot run (`why` says why, None when it can): the full benchmark stops
    there (it needs `needs`); a smoke run says what it skips and goes on."""
    if not why:
        return False
    if not smoke:
        raise SystemExit(f"the full benchmark needs {needs}: {why}")
    say(f"SKIPPING {what}: {why}")
    return True


def remove_domain(conn: Any, uuid: str) -> None:
    """Destroy and undefine a domain of libvirt connection `conn`, if it is there (untimed)."""
    import libvirt

    import handlers.connection  # noqa: F401  (libvirt prints no "domain not found" here)

    with contextlib.suppress(libvirt.libvirtError):
        dom = conn.lookupByUUIDString(uuid)
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


@dataclass
class Measured:
    """What one throughput + latency measurement of a consumer gave."""

    ops_s: float
    latencies: list[float]  # seconds, closed loop
    cpu_s: float  # the consumer's CPU during the throughput phase
    event_bytes: int
    cpu: dict[str, float] = field(default_factory=dict)  # CpuMeter.stop()


def drain(
    tap: EventTap, procs: Sequence[Process], rids: list[str]
) -> tuple[list[Seen], dict[str, float]]:
    """The consumers `procs` started at once (none drains a queue alone for a while) on
    pre-filled queues, until every request in `rids` has its `after` event: those events, and
    where the CPU went meanwhile (`CpuMeter.stop`)."""
    for p in procs:
        p.spawn()
    for p in procs:
        p.wait_ready()
    meter = CpuMeter(*(p.pid for p in procs))

    def running() -> None:
        for p in procs:
            p.check_running()

    try:
        # bounded well within what a smoke pass is given, even on a slow machine
        seen = tap.wait_all(rids, timeout=60.0 + len(rids) / 10, check=running)
    except RuntimeError as exc:
        logs = "; ".join(f"pid {p.pid}'s log ends: {p.tail(1500)}" for p in procs)
        raise RuntimeError(f"{exc}; {logs}") from None
    cpu = meter.stop(len(rids))
    check_ok(seen)
    return seen, cpu


def measure_consumer(
    topo: Topology, host: str, tap: EventTap, proc: Process, n: int, m: int
) -> Measured:
    """Throughput over a queue pre-filled with n start_vm messages (`proc`, the consumer, is
    started only after the fill), then m closed-loop round trips."""
    rids = prefill(topo.ops, host, topo.host_queue.name, [start_body() for _ in range(n)])
    seen, cpu = drain(tap, [proc], rids)
    pub = OpPublisher(topo.ops, host)
    try:
        lat = closed_loop(pub, tap, (start_body() for _ in range(m)))
    finally:
        pub.close()
    cpu_s = cpu["cpu_ms_per_op"] * n / 1e3
    return Measured(rate([s.at for s in seen]), lat, cpu_s, max(s.size for s in seen), cpu)
