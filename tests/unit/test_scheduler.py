"""The per-VM scheduler without a broker: one job at a time per VM in arrival order, VMs at
once, a crashed job not blocking its VM, and a stop dropping what has not started."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from worker.jobs import Job
from worker.scheduler import Scheduler


def _job(rid: str, vm: str) -> Job:
    return Job(rid, SimpleNamespace(op="start_vm", vm=SimpleNamespace(uuid=vm)), None, [])


class Gate:
    """A run function whose jobs wait until let go; it records what ran, and at once with what."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.started: list[str] = []
        self.running: set[str] = set()
        self.together: set[frozenset[str]] = set()
        self.go: set[str] = set()

    def __call__(self, job: Job) -> str:
        with self.cv:
            self.started.append(job.request_id)
            self.running.add(job.request_id)
            self.together.add(frozenset(self.running))
            self.cv.notify_all()
            self.cv.wait_for(lambda: job.request_id in self.go, timeout=10)
            self.running.discard(job.request_id)
        if job.request_id.startswith("crash"):
            raise RuntimeError("a bug outside the runner")
        return f"done {job.request_id}"

    def release(self, *rids: str) -> None:
        with self.cv:
            self.go.update(rids)
            self.cv.notify_all()

    def wait_started(self, n: int) -> None:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.started) >= n, timeout=10), self.started


def _collect_until(s: Scheduler[Any], n: int) -> list[tuple[Job, Any]]:
    got: list[tuple[Job, Any]] = []
    end = time.monotonic() + 10
    while len(got) < n and time.monotonic() < end:
        got += s.collect()
        time.sleep(0.005)
    return got


def test_one_vm_in_arrival_order_and_vms_at_once() -> None:
    gate = Gate()
    wakes: list[int] = []
    s: Scheduler[str] = Scheduler(gate, concurrency=4, wake=lambda: wakes.append(1))
    for rid, vm in [("a1", "A"), ("a2", "A"), ("b1", "B"), ("a3", "A")]:
        s.add(_job(rid, vm))
    gate.wait_started(2)
    assert sorted(gate.started) == ["a1", "b1"] and len(s) == 4
    assert s.get("a2") is not None
    gate.release("a1", "a2", "a3", "b1")
    done = _collect_until(s, 4)
    assert [rid for rid in gate.started if rid.startswith("a")] == ["a1", "a2", "a3"]
    assert frozenset({"a1", "b1"}) in gate.together  # two VMs at once
    assert not any({"a1", "a2"} <= t or {"a2", "a3"} <= t for t in gate.together)
    assert {j.request_id: r for j, r in done}["a2"] == "done a2"
    assert len(s) == 0 and len(wakes) == 4
    s.shutdown()


def test_a_crashed_job_comes_back_as_none_and_its_vm_goes_on() -> None:
    gate = Gate()
    s: Scheduler[str] = Scheduler(gate, concurrency=2)
    s.add(_job("crash1", "A"))
    s.add(_job("a2", "A"))
    gate.release("crash1", "a2")
    done = _collect_until(s, 2)
    assert [(j.request_id, r) for j, r in done] == [("crash1", None), ("a2", "done a2")]
    s.shutdown()


def test_on_stop_queued_jobs_are_dropped_and_running_ones_finish() -> None:
    gate = Gate()
    stopping = threading.Event()
    s: Scheduler[str] = Scheduler(gate, concurrency=2, stopping=stopping)
    for rid in ("a1", "a2", "a3"):
        s.add(_job(rid, "A"))
    gate.wait_started(1)
    stopping.set()
    s.drop_queued()
    assert len(s) == 1 and s.get("a2") is None
    gate.release("a1", "a2", "a3")
    done = _collect_until(s, 1)
    s.shutdown()
    assert [j.request_id for j, _ in done] == ["a1"] and gate.started == ["a1"]
    assert len(s) == 0


def test_a_control_job_runs_at_once_beside_the_job_running_on_its_vm() -> None:
    gate = Gate()
    s: Scheduler[str] = Scheduler(gate, concurrency=1)
    s.add(_job("migrate", "A"))
    s.add(_job("start", "A"))
    cancel = _job("cancel", "A")
    cancel.control = True
    s.add(cancel)
    gate.wait_started(2)  # the pool's one thread is busy with `migrate`: not in its lane
    assert gate.started == ["migrate", "cancel"]
    gate.release("cancel")
    assert [(j.request_id, r) for j, r in _collect_until(s, 1)] == [("cancel", "done cancel")]
    assert gate.started == ["migrate", "cancel"]  # the VM's queue is still held by `migrate`
    gate.release("migrate", "start")
    assert [j.request_id for j, _ in _collect_until(s, 2)] == ["migrate", "start"]
    s.shutdown()
