"""The worker, wired from parts with one job each (docs/reliability.md):

- `Link` (worker/link.py): the AMQP connection: consumes, publishes events with confirms,
  acks, dead-letters, reconnects. One thread, the connection's, runs it and the loop below.
- `Admission` (worker/admission.py): a delivery becomes a job, a duplicate or a refusal; every
  journal record of a request.
- `Scheduler` (worker/scheduler.py): one job at a time per VM in arrival order, VMs at once.
- `Executor` (worker/execute.py): one job on a pool thread, with the `Middleware`
  (worker/middleware.py) around it: log context, ownership claims, counts and metrics.

Every event goes through the journal's outbox first and is published by the connection thread
with publisher confirms; a message is acked only once its terminal event is confirmed.
"""

from __future__ import annotations

import contextlib
import gc
import json
import signal
import threading
from collections.abc import Callable
from typing import Any

import structlog
from kombu.message import Message

from handlers.connection import LibvirtConnection
from worker import logs
from worker.admission import Admission
from worker.brokererrors import redact
from worker.config import Settings
from worker.domevents import DomainEvents, Ownership
from worker.execute import Executor
from worker.heartbeat import Heartbeat, QueueDepth
from worker.hooks import HookEngine
from worker.hooks.points import ALIASES
from worker.jobs import Job, Settle, Stats
from worker.journal import Journal
from worker.link import Link
from worker.metrics import Metrics
from worker.middleware import Claims, Counts, LogContext, TraceContext
from worker.peers import Peers
from worker.runner import Runner
from worker.scheduler import Scheduler
from worker.topology import Topology
from worker.tracing import Tracing

log = structlog.get_logger()


class Service:
    """`run()` blocks until `stop()`; safe to run in a thread (tests, the demo)."""

    def __init__(
        self,
        settings: Settings,
        *,
        libvirt: LibvirtConnection | None = None,
        hooks: HookEngine | None = None,
        transport_options: dict[str, Any] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        freeze_gc: bool = False,
        tracer_provider: Any = None,
    ) -> None:
        """`tracer_provider`: an OpenTelemetry SDK TracerProvider to trace with, whatever the
        settings say (tests give one with an in-memory exporter)."""
        self.settings = settings
        self.tracing = Tracing.from_settings(settings, tracer_provider)  # a bad setting: first
        # then another worker on this state directory stops this one (JournalInUse), before
        # it opens anything else
        self.journal = Journal(settings.state_dir / "journal.sqlite")
        self.freeze_gc = freeze_gc
        self.host = settings.host
        self.topology = Topology.from_settings(settings)
        self.lv = libvirt or LibvirtConnection(settings.libvirt_uri)
        self._own_hooks = hooks is None  # an engine made here is stopped here, in run()
        self.hooks = hooks or HookEngine(
            settings.hooks_root,
            timeout=settings.hook_timeout,
            output_limit=settings.hook_output_limit,
            inproc=settings.inproc_hooks,
            prewarm=settings.hook_prewarm,
            state_dir=settings.state_dir / "hooks",
            payload_dir=settings.state_dir / "payload",
        )
        self.runner = Runner(settings, self.lv, self.hooks, Peers(settings))
        self.stats = Stats()
        self.metrics = Metrics(self.host)
        self.ownership = Ownership()  # VMs our own operations are changing (domevents)
        self._stop = threading.Event()
        self.link = Link(
            settings,
            self.topology,
            self.journal,
            stats=self.stats,
            metrics=self.metrics,
            on_message=self._on_message,
            on_decode_error=self._on_decode_error,
            transport_options=transport_options,
            on_event=on_event,
            on_open=self._on_open,
        )
        self.ready = self.link.ready
        self.scheduler: Scheduler[Settle] = Scheduler(
            lambda job: self.executor(job),
            concurrency=settings.concurrency,
            wake=self.link.wake,
            stopping=self._stop,
        )
        self.admission = Admission(
            settings,
            self.journal,
            stats=self.stats,
            metrics=self.metrics,
            in_flight=self.scheduler.get,
            tracing=self.tracing,
        )
        self.executor = Executor(
            self.host,
            self.admission,
            self.runner,
            [
                TraceContext(),
                LogContext(self.host),
                Claims(self.ownership),
                Counts(self.stats, self.metrics),
            ],
        )
        self._domevents: DomainEvents | None = None
        self._heartbeat: Heartbeat | None = None
        self._reconciled = False

    def stop(self) -> None:
        """Finish the operations already running, then return from run()."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self) -> None:
        s = self.settings
        log.info(
            "worker.starting",
            host=self.host,
            broker=[redact(u) for u in s.broker_urls],
            libvirt=s.libvirt_uri,
            hooks=str(s.hooks_root),
        )
        if not s.allowed_publishers:
            log.warning("worker.any_publisher_allowed", exchange=self.topology.ops.name)
        self._host_chain("before_vmworker_start")
        try:
            self._start_observers()
            if self.freeze_gc:
                # what start-up made (modules, schemas, libvirt and hook state) lives as long as
                # the process: out of the cyclic collector's sight, a full collection looks at
                # what operations create only (from ~40 ms to ~1 ms at 100 MB: a latency spike)
                gc.collect()
                gc.freeze()
            self.link.run(
                self._serve,
                done=lambda: self._stop.is_set() and not self.scheduler,
                idle=self._collect,
            )
        finally:
            self.scheduler.shutdown()
            self._goodbye()  # if not said on a connection, host.offline waits in the outbox
            self._host_chain("after_vmworker_stop")
            if self._own_hooks:
                self.hooks.close()  # its fork servers (hook_prewarm), after the last chain
            self.metrics.close()
            self.journal.close()
            self.tracing.shutdown()
            self.lv.close()
            self.link.close()
            log.info("worker.stopped", host=self.host)

    # -- the connection thread -------------------------------------------------------------
    def _serve(self) -> None:
        """One connection's life: take deliveries in, hand finished jobs' acks to the link."""
        link, consuming = self.link, True
        link.flush()
        while True:
            if self._stop.is_set():
                if consuming:
                    link.cancel()
                    consuming = False
                    self.scheduler.drop_queued()  # their messages come back to the queue
                if not self.scheduler and not link.unsettled:
                    if self._goodbye():
                        link.flush()  # host.offline, published before we leave
                    return
            link.drain(timeout=0.01 if self.scheduler else 0.1)
            self._collect()
            link.flush()
            link.heartbeat()
            self.admission.prune(when_due=True)

    def _on_message(self, message: Message) -> None:
        if self._stop.is_set():
            return  # not taken: the broker gives it back when the channel closes
        try:
            self._take(self.admission.admit(message, self.link.generation))
        except Exception:  # never let one message take the connection thread down
            log.exception("message.crashed")  # requeued, up to the delivery limit
            with contextlib.suppress(Exception):
                message.reject(requeue=True)

    def _on_decode_error(self, message: Message, exc: Exception) -> None:
        if not self._stop.is_set():
            self._take(self.admission.undecodable(message, self.link.generation, exc))

    def _take(self, admitted: Job | Settle | None) -> None:
        if isinstance(admitted, Job):
            self.scheduler.add(admitted)
        elif admitted is not None:
            self.link.settle(admitted)

    def _collect(self) -> None:
        for job, settle in self.scheduler.collect():
            if settle is None:  # crashed outside the runner: requeued, up to the delivery limit
                self.link.requeue(job.deliveries)
            else:
                self.link.settle(settle)

    # -- observers: state events, heartbeat, metrics (docs/operations.md) --------------------
    def _start_observers(self) -> None:
        s = self.settings
        self.metrics.bind(
            outbox=self.journal.outbox_size,
            inflight=lambda: len(self.scheduler),
            connected=self.ready.is_set,
        )
        if s.metrics_port:
            self.metrics.serve(s.metrics_port, s.metrics_address)
        self._domevents = DomainEvents(
            s.libvirt_uri,
            self.host,
            self.journal.enqueue,
            ownership=self.ownership,
            counter=self.metrics,
        ).start()
        self._heartbeat = Heartbeat(
            host=self.host,
            interval=s.heartbeat_interval,
            inventory_interval=s.inventory_interval,
            sink=self.journal.enqueue,
            libvirt_conn=self.lv,
            hooks=self.hooks,
            queue_depth=QueueDepth(self.link.side_connection, self.topology.host_queue.name),
            outbox_size=self.journal.outbox_size,
            in_flight=lambda: len(self.scheduler),
            on_beat=self.metrics.heartbeats.inc,
            on_inventory=self.metrics.inventory_queued,
            online_by_caller=True,
        ).start()

    def _on_open(self, queue_depth: int | None) -> None:
        """A connection is up, nothing consumed yet: the first time, `host.online` with the
        depth found, then the journal's leftovers (their events come after it)."""
        if self._reconciled:
            return
        if self._heartbeat is not None:
            self._heartbeat.online(queue_depth)
        self.admission.reconcile()
        self._reconciled = True

    def _goodbye(self) -> bool:
        """Stop the observers and queue `host.offline`; True the first time only."""
        dom, self._domevents = self._domevents, None
        beat, self._heartbeat = self._heartbeat, None
        if dom is not None:
            dom.stop()
        if beat is None:
            return False
        beat.stop(offline=True)
        return True

    def _host_chain(self, name: str) -> None:
        """`name`'s chain, then those of its VDSM aliases (`before_vdsm_start`, ...)."""
        for point in (name, *ALIASES.get(name, ())):
            try:
                res = self.hooks.run_chain(
                    point,
                    json.dumps({"host": self.host}),
                    vm_id="",
                    custom={},
                    context={"host": self.host},
                )
                if res.failed:
                    log.warning(
                        "hook.chain_failed",
                        point=point,
                        stderr_tail=logs.tail(res.failure_stderr()),
                    )
            except Exception:
                log.exception("hook.chain_crashed", point=point)
