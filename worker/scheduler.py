"""Per-VM scheduling: the jobs of one VM run one at a time in arrival order, jobs of different
VMs run at once on a bounded pool. Knows neither the broker nor libvirt.

`add`, `collect` and `drop_queued` belong to one thread (the connection's); pool threads only
hand back what they finished, through a queue, and call `wake` so that thread notices at once.

A control job (`job.control`: `cancel_migration`) acts on the job running on its VM, so it
cannot wait behind it: it runs at once on a pool of its own (the control lane).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from worker.jobs import Job

R = TypeVar("R")


class Scheduler(Generic[R]):
    """Runs `run(job)` on the pool; `collect()` returns each finished job with what `run`
    returned (None if it raised), and starts the next job of its VM."""

    def __init__(
        self,
        run: Callable[[Job], R],
        *,
        concurrency: int,
        wake: Callable[[], None] = lambda: None,
        stopping: threading.Event | None = None,
    ) -> None:
        self._run = run
        self._wake = wake
        self._stopping = stopping or threading.Event()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="op")
        self._control = ThreadPoolExecutor(2, thread_name_prefix="control")
        self._done: queue.Queue[tuple[Job, R | None]] = queue.Queue()
        self._vm_queues: dict[str, deque[Job]] = {}
        self._running: set[str] = set()  # VMs with a job in the pool
        self._inflight: dict[str, Job] = {}  # request id -> job, queued or running here

    def __len__(self) -> int:
        """Jobs queued or running (read from other threads too: a dict's len is atomic)."""
        return len(self._inflight)

    def get(self, request_id: str) -> Job | None:
        return self._inflight.get(request_id)

    def add(self, job: Job) -> None:
        self._inflight[job.request_id] = job
        if job.control:
            self._control.submit(self._execute, job)
            return
        self._vm_queues.setdefault(job.vm, deque()).append(job)
        self._dispatch(job.vm)

    def collect(self) -> list[tuple[Job, R | None]]:
        """The jobs finished since the last call, in the order they finished."""
        out: list[tuple[Job, R | None]] = []
        while True:
            try:
                job, result = self._done.get_nowait()
            except queue.Empty:
                return out
            if self._inflight.get(job.request_id) is job:
                del self._inflight[job.request_id]
            out.append((job, result))
            if job.control:  # never held its VM
                continue
            self._running.discard(job.vm)
            self._dispatch(job.vm)

    def drop_queued(self) -> None:
        """On stop: jobs not yet started are forgotten (their messages stay unacked)."""
        for vm, q in list(self._vm_queues.items()):
            for job in q:
                self._inflight.pop(job.request_id, None)
                span = job.trace.span
                if span is not None:  # not run here: its trace says so (redelivered later)
                    span.set_attribute("vmworker.dropped_at_stop", True)
                    span.end()
            q.clear()
            self._vm_queues.pop(vm, None)

    def shutdown(self) -> None:
        """Wait for the running jobs."""
        self._pool.shutdown(wait=True)
        self._control.shutdown(wait=True)

    def _dispatch(self, vm: str) -> None:
        if vm in self._running or self._stopping.is_set():
            return
        q = self._vm_queues.get(vm)
        if not q:
            self._vm_queues.pop(vm, None)
            return
        job = q.popleft()
        self._running.add(vm)
        self._pool.submit(self._execute, job)

    def _execute(self, job: Job) -> None:
        result: R | None = None
        try:
            result = self._run(job)
        finally:  # also when it raised: the VM's next job must not wait forever
            self._done.put((job, result))
            self._wake()
