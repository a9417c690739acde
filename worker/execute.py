"""One job, on a pool thread: its journal records (through admission), the runner (hooks and
libvirt), and the middleware around them. Returns when to ack: once its terminal event is
confirmed."""

from __future__ import annotations

import structlog

from worker.admission import Admission
from worker.jobs import Job, Settle
from worker.middleware import Middleware
from worker.runner import Outcome, Runner

log = structlog.get_logger()


class Executor:
    def __init__(
        self, host: str, admission: Admission, runner: Runner, middleware: list[Middleware]
    ) -> None:
        self.host = host
        self.admission = admission
        self.runner = runner
        self.middleware = middleware

    def __call__(self, job: Job) -> Settle:
        """Raises only on a bug outside the runner: the job is then left unacked, and the
        broker redelivers it, up to the delivery limit."""
        mw = self.middleware
        for m in mw:
            m.enter(job)
        try:
            expired = self.admission.expired(job)
            if expired is not None:  # never started: no `before`, not dead-lettered
                return self._finish(job, expired, dead_letter=False)
            self.admission.start(job)
            for m in mw:
                m.before_run(job)
            outcome: Outcome | None = None
            try:
                context = {
                    "host": self.host,
                    "correlation_id": job.correlation_id,
                    "attempt": job.attempt,
                }
                outcome = self.runner.run(
                    job.op,
                    request_id=job.request_id,
                    context=context,
                    progress=lambda data: self.admission.progress(job, data),
                )
            finally:
                for m in reversed(mw):
                    m.after_run(job, outcome)
            return self._finish(job, outcome, dead_letter=True)
        except BaseException:
            log.exception("op.job_crashed")
            raise
        finally:
            for m in reversed(mw):
                m.exit(job)

    def _finish(self, job: Job, outcome: Outcome, *, dead_letter: bool) -> Settle:
        settle, data = self.admission.finish(job, outcome, dead_letter=dead_letter)
        for m in self.middleware:
            m.finished(job, outcome, data)
        return settle
