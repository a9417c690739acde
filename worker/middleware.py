"""What happens around every operation without being the operation: log context, ownership
claims for state events, counts and metrics. Each is a `Middleware`; the executor calls them,
in order, at named points of one job (reversed on the way out):

    enter(job)                   a pool thread took the job
      before_run(job)            the `before` event is on disk; libvirt is next
      after_run(job, outcome)    the runner returned (outcome) or raised (None)
      finished(job, outcome, d)  the terminal event is on disk; `d` is its data
    exit(job)                    always, last
"""

from __future__ import annotations

from typing import Any

import structlog

from worker import tracing
from worker.domevents import Ownership
from worker.jobs import Job, Stats
from worker.metrics import Metrics
from worker.runner import Outcome


class Middleware:
    """Every point does nothing unless overridden."""

    def enter(self, job: Job) -> None:
        pass

    def before_run(self, job: Job) -> None:
        pass

    def after_run(self, job: Job, outcome: Outcome | None) -> None:
        pass

    def finished(self, job: Job, outcome: Outcome, data: dict[str, Any]) -> None:
        pass

    def exit(self, job: Job) -> None:
        pass


class TraceContext(Middleware):
    """The job's trace (worker/tracing.py) is its pool thread's: hook runs, libvirt calls and
    messages to other hosts find it there. With tracing on, its span gets the outcome and ends
    when the job does."""

    def enter(self, job: Job) -> None:
        tracing.enter(job.trace)

    def after_run(self, job: Job, outcome: Outcome | None) -> None:
        if outcome is None and job.trace.span is not None:
            job.trace.failed(None, "internal", "the job crashed outside the runner")

    def finished(self, job: Job, outcome: Outcome, data: dict[str, Any]) -> None:
        span = job.trace.span
        if span is None:
            return
        span.set_attributes(
            {
                "vmworker.phase": outcome.phase,
                "vmworker.state": outcome.state,
                "vmworker.attempt": outcome.attempts,
            }
        )
        if outcome.error is not None:
            span.set_attribute("vmworker.error.source", outcome.error.source)
            job.trace.failed(None, outcome.error.code, outcome.error.message)

    def exit(self, job: Job) -> None:
        tracing.leave(job.trace)
        if job.trace.span is not None:
            job.trace.span.end()


class LogContext(Middleware):
    """Every log line of a job names its request, operation and VM."""

    def __init__(self, host: str) -> None:
        self.host = host

    def enter(self, job: Job) -> None:
        structlog.contextvars.bind_contextvars(
            host=self.host, request_id=job.request_id, op=job.op.op, vm=job.vm
        )

    def exit(self, job: Job) -> None:
        structlog.contextvars.clear_contextvars()


class Claims(Middleware):
    """While libvirt is at work on a VM, its state changes are ours, not news (domevents)."""

    def __init__(self, ownership: Ownership) -> None:
        self.ownership = ownership

    def before_run(self, job: Job) -> None:
        self.ownership.acquire(job.vm, job.request_id, job.op.op)

    def after_run(self, job: Job, outcome: Outcome | None) -> None:
        if job.op.op == "finish_incoming":  # the migration is over: so is prepare's claim
            self.ownership.end(job.vm)
            return
        # the VM arrives after prepare_incoming ends: its claim holds while the source migrates
        hold = job.op.params.hold_s if job.op.op == "prepare_incoming" and outcome else 0.0
        if outcome is not None and not outcome.ok:
            hold = 0.0
        self.ownership.release(job.vm, job.request_id, hold)


class Counts(Middleware):
    """The service's `stats` and the Prometheus metrics of finished operations."""

    def __init__(self, stats: Stats, metrics: Metrics) -> None:
        self.stats = stats
        self.metrics = metrics

    def after_run(self, job: Job, outcome: Outcome | None) -> None:
        if outcome is not None:
            self.stats.ran += 1

    def finished(self, job: Job, outcome: Outcome, data: dict[str, Any]) -> None:
        self.stats.count(outcome.phase)
        self.metrics.operation_finished(data)
