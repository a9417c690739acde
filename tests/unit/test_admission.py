"""Admission without a broker: a delivery becomes a job, a duplicate or a refusal, and the
journal and the outbox say so."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kombu.message import Message

from worker.admission import Admission
from worker.config import Settings
from worker.domevents import Ownership
from worker.execute import Executor
from worker.jobs import Job, Settle, Stats
from worker.journal import FINISHED, Journal
from worker.metrics import Metrics
from worker.middleware import Claims, Middleware
from worker.runner import Outcome


def _message(
    body: bytes | dict[str, Any],
    *,
    request_id: str | None = "r1",
    user: str = "control",
    headers: dict[str, Any] | None = None,
    redelivered: bool = False,
) -> Message:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    props = {"user_id": user, **({"message_id": request_id} if request_id else {})}
    return Message(
        body=raw,
        delivery_tag=1,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_info={"redelivered": redelivered},
        properties=props,
        headers=headers or {},
    )


def _start(vm: str | None = None) -> dict[str, Any]:
    vm = vm or str(uuid.uuid4())
    return {
        "version": 1,
        "op": "start_vm",
        "vm": {"uuid": vm, "name": "web-1", "vcpus": 1, "memory_mib": 512},
    }


@pytest.fixture
def desk(tmp_path: Path) -> Any:
    journal = Journal(tmp_path / "journal.sqlite")
    in_flight: dict[str, Job] = {}
    settings = Settings(
        host="h1",
        broker="memory://",
        state_dir=tmp_path,
        hooks_root=tmp_path / "hooks",
        allowed_publishers=["control"],
    )
    adm = Admission(
        settings, journal, stats=Stats(), metrics=Metrics("h1"), in_flight=in_flight.get
    )
    adm.in_flight_jobs = in_flight  # type: ignore[attr-defined]
    yield adm
    journal.close()


def _outbox(adm: Admission) -> list[dict[str, Any]]:
    return [e.event for e in adm.journal.pending()]


def test_a_valid_request_becomes_a_job_and_is_journaled_as_received(desk: Admission) -> None:
    deadline = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    body = _start()
    job = desk.admit(_message(body, headers={"x-deadline": deadline}), generation=3)
    assert isinstance(job, Job)
    assert (job.request_id, job.vm, job.op.op) == ("r1", body["vm"]["uuid"], "start_vm")
    assert job.deadline is not None and job.deliveries[0].generation == 3
    assert desk.journal.get("r1") is not None
    assert _outbox(desk) == []  # the `before` event comes when the job starts, not here
    assert desk.expired(job) is None


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (lambda: _message(b"{not json"), None),
        (lambda: _message(_start(), request_id=None), "no_message_id"),
        (lambda: _message(_start(), headers={"x-deadline": "tomorrow"}), "bad_deadline"),
        (lambda: _message({**_start(), "op": "fly_vm"}), None),
    ],
)
def test_bad_input_is_refused_with_a_fail_event_and_a_dead_letter_reason(
    desk: Admission, message: Any, code: str | None
) -> None:
    got = desk.admit(message(), generation=1)
    assert isinstance(got, Settle)
    assert got.dead_letter is not None
    assert got.dead_letter["x-vmworker-error-source"] == "validation"
    if code:
        assert got.dead_letter["x-vmworker-error-code"] == code
    [ev] = _outbox(desk)
    assert ev["data"]["phase"] == "fail" and ev["data"]["error"]["source"] == "validation"
    assert desk.stats.by_outcome == {"fail": 1}


def test_a_stranger_is_refused_before_anything_is_parsed_or_journaled(desk: Admission) -> None:
    got = desk.admit(_message(_start(), user="mallory"), generation=1)
    assert isinstance(got, Settle) and got.dead_letter is not None
    assert got.dead_letter["x-vmworker-error-code"] == "unauthorized"
    assert desk.journal.get("r1") is None


def test_a_finished_request_is_a_duplicate_with_its_recorded_terminal_event(
    desk: Admission,
) -> None:
    job = desk.admit(_message(_start()), generation=1)
    assert isinstance(job, Job)
    desk.start(job)
    settle, data = desk.finish(job, Outcome(True, "running", 5.0, 1), dead_letter=True)
    assert settle.dead_letter is None and data["phase"] == "after"
    assert desk.journal.get("r1").state == FINISHED  # type: ignore[union-attr]
    again = desk.admit(_message(_start(), redelivered=True), generation=2)
    assert isinstance(again, Settle) and again.dead_letter is None
    dup = _outbox(desk)[-1]
    assert dup["data"]["phase"] == "after" and dup["data"]["duplicate"] is True
    assert desk.stats.duplicates == 1


def test_a_copy_of_a_job_already_here_joins_it(desk: Admission) -> None:
    body = _start()
    job = desk.admit(_message(body), generation=1)
    assert isinstance(job, Job)
    desk.in_flight_jobs[job.request_id] = job  # type: ignore[attr-defined]
    assert desk.admit(_message(body, redelivered=True), generation=1) is None
    assert len(job.deliveries) == 2 and job.deliveries[1].redelivered


def test_a_job_past_its_deadline_fails_as_expired_and_is_not_dead_lettered(
    desk: Admission,
) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    job = desk.admit(_message(_start(), headers={"x-deadline": past}), generation=1)
    assert isinstance(job, Job)
    outcome = desk.expired(job)
    assert outcome is not None and outcome.error is not None
    assert outcome.error.code == "expired"
    settle, data = desk.finish(job, outcome, dead_letter=False)
    assert settle.dead_letter is None and data["error"]["source"] == "expired"


class Recorder(Middleware):
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def enter(self, job: Job) -> None:
        self.calls.append("enter")

    def before_run(self, job: Job) -> None:
        self.calls.append("before_run")

    def after_run(self, job: Job, outcome: Outcome | None) -> None:
        self.calls.append(f"after_run {'ok' if outcome else 'raised'}")

    def finished(self, job: Job, outcome: Outcome, data: dict[str, Any]) -> None:
        self.calls.append(f"finished {data['phase']}")

    def exit(self, job: Job) -> None:
        self.calls.append("exit")


def test_the_executor_calls_each_middleware_point_around_one_job(desk: Admission) -> None:
    calls: list[str] = []
    ownership = Ownership()
    claimed: list[bool] = []

    def run(op: Any, request_id: str, context: dict[str, Any], **_kw: Any) -> Outcome:
        claimed.append(ownership.owner(str(op.vm.uuid)) is not None)
        calls.append("runner")
        if request_id == "r2":
            raise RuntimeError("a bug outside the runner")
        return Outcome(True, "running", 1.0, 1)

    runner = SimpleNamespace(run=run)
    ex = Executor("h1", desk, runner, [Recorder(calls), Claims(ownership)])  # type: ignore[arg-type]
    job = desk.admit(_message(_start()), generation=1)
    assert isinstance(job, Job)
    settle = ex(job)
    assert settle.seq > 0 and claimed == [True]
    assert calls == ["enter", "before_run", "runner", "after_run ok", "finished after", "exit"]
    assert [e["data"]["phase"] for e in _outbox(desk)] == ["before", "after"]
    calls.clear()
    crash = desk.admit(_message(_start(), request_id="r2"), generation=1)
    assert isinstance(crash, Job)
    with pytest.raises(RuntimeError):
        ex(crash)
    assert calls == ["enter", "before_run", "runner", "after_run raised", "exit"]
    # released although the run raised: over once its grace has passed
    assert ownership.owner(crash.vm, at=time.monotonic() + 60) is None
