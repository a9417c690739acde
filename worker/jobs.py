"""What the worker's parts hand each other: a delivery, a job (an admitted operation), a
settlement (ack these deliveries once that outbox event is confirmed) and the running counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kombu.message import Message

from worker.errors import OpError
from worker.tracing import Trace

REASON_HEADERS = ("x-vmworker-error-code", "x-vmworker-error-source", "x-vmworker-reason")


@dataclass
class Delivery:
    message: Message
    generation: int  # the connection it came on: its delivery tag is void on any other

    @property
    def redelivered(self) -> bool:
        return bool(self.message.delivery_info.get("redelivered"))


@dataclass
class Job:
    request_id: str
    op: Any
    correlation_id: str | None
    deliveries: list[Delivery]
    recovered: bool = False
    replay_of: str | None = None  # the x-replay-of header: this request replays that one
    deadline: datetime | None = None  # x-deadline: not started past it, fails as `expired`
    attempt: int = 1  # which run of the request on this host: 2 and up after the worker died in it
    control: bool = False  # runs at once, not behind its VM's queue (cancel_migration)
    trace: Trace = field(default_factory=lambda: Trace({}))  # its message's trace context

    @property
    def vm(self) -> str:
        return str(self.op.vm.uuid)


@dataclass
class Settle:
    """Ack (or dead-letter, then ack) these deliveries once outbox entry `seq` is confirmed."""

    seq: int
    deliveries: list[Delivery]
    dead_letter: dict[str, str] | None = None


@dataclass
class Stats:
    received: int = 0
    ran: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    published: int = 0
    reconnects: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + 1


def reason(err: OpError) -> dict[str, str]:
    """The dead-lettered copy's headers that say why."""
    return dict(zip(REASON_HEADERS, (err.code, err.source, err.message[:1000]), strict=True))
