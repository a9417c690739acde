"""The pieces under the reliability guarantees, one by one: how libvirt errors are classified,
the retry loop (backoff, attempts, permanent errors), the journal's own promises, and the
worker's reading of delivery headers."""

from __future__ import annotations

import sqlite3
import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, Literal

import libvirt
import pytest
from structlog.testing import capture_logs

from handlers import Operation
from handlers.connection import LibvirtConnection
from handlers.errors import OpError
from handlers.libvirt_errors import from_libvirt, is_connection_error
from handlers.message import OpMessage
from handlers.operations import OPERATIONS
from worker.admission import _deadline, _delivery_count
from worker.config import Settings
from worker.hooks import HookEngine
from worker.journal import FINISHED, STARTED, Journal
from worker.link import _consumer_timeout_ms, _has_consumer_timeout
from worker.runner import Runner


def lv_error(code: int, domain: int, message: str = "boom") -> libvirt.libvirtError:
    """A libvirtError as libvirt raises it (its `err` tuple is what the getters read)."""
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain, message, 2, None, None, None, 0, 0)
    return exc


# -- classification by code and domain, never by text --------------------------------------
@pytest.mark.parametrize(
    ("code", "domain", "transient", "connection"),
    [
        (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, True, True),  # socket refused
        (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC, True, True),  # socket closed
        (libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_FROM_NONE, True, True),
        (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_FROM_REMOTE, True, True),
        (libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_FROM_QEMU, True, False),  # job lock
        (libvirt.VIR_ERR_RESOURCE_BUSY, libvirt.VIR_FROM_QEMU, True, False),  # device busy
        (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_FROM_QEMU, True, False),
        (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_QEMU, False, False),  # not the link
        (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU, False, False),
        (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_QEMU, False, False),
        (libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_DOMAIN, False, False),
    ],
)
def test_libvirt_errors_are_transient_by_code_and_domain(code, domain, transient, connection):
    exc = lv_error(code, domain, "Timed out" if not transient else "fine")
    err = from_libvirt(exc)
    assert err.transient is transient and err.source == "libvirt" and err.libvirt_code == code
    assert is_connection_error(exc) is connection
    assert err.details["connection_lost"] is connection


# -- the retry loop ------------------------------------------------------------------------
def _runner(tmp_path, **retry: Any) -> Runner:  # type: ignore[no-untyped-def]
    settings = Settings(
        host="h",
        libvirt_uri="test:///default",
        hooks_root=tmp_path,
        state_dir=tmp_path,
        retry={
            "default": {
                "attempts": 5,
                "initial_s": 0.05,
                "max_backoff_s": 1.0,
                "deadline_s": 30,
                **retry,
            }
        },
    )
    return Runner(settings, LibvirtConnection("test:///default"), HookEngine(tmp_path))


def _flaky(monkeypatch, errors: list[libvirt.libvirtError], each: Any = None) -> list[float]:  # type: ignore[no-untyped-def]
    """Register op `flaky_vm`: its call raises `errors` one by one, then succeeds (`each`, if
    given, is called first on every call)."""
    calls: list[float] = []

    def execute(_ctx: Any, _xml: str) -> None:
        if each is not None:
            each()
        calls.append(time.monotonic())
        if errors:
            raise errors.pop(0)

    handler = Operation(
        FlakyVm,
        point="vm_start",
        payload="domxml",
        expects=("started",),
        prepare=lambda ctx: "<domain/>",
        execute=execute,
    )
    monkeypatch.setitem(OPERATIONS, "flaky_vm", handler)
    return calls


class FlakyVm(OpMessage):
    op: Literal["flaky_vm"]


def _op() -> Any:
    return SimpleNamespace(op="flaky_vm", vm=SimpleNamespace(uuid=uuid.uuid4()), custom={})


def test_transient_errors_are_retried_with_growing_backoff_and_counted(tmp_path, monkeypatch):
    busy = libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_FROM_QEMU
    calls = _flaky(monkeypatch, [lv_error(*busy) for _ in range(3)])
    with capture_logs() as logs:
        out = _runner(tmp_path).run(_op(), request_id="r1")
    assert out.ok and out.attempts == 4 and len(calls) == 4
    retries = [e for e in logs if e["event"] == "libvirt.retrying"]
    assert [e["attempt"] for e in retries] == [1, 2, 3]  # each retry logged, with its backoff:
    sleeps = [e["sleep_s"] for e in retries]  # 0.05 * 2^n plus a jitter below 0.05
    assert all(0.05 * 2**n <= s <= 0.05 * 2**n + 0.05 for n, s in enumerate(sleeps)), sleeps


def test_permanent_errors_fail_at_once(tmp_path, monkeypatch):
    calls = _flaky(monkeypatch, [lv_error(libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_DOMAIN)])
    out = _runner(tmp_path).run(_op(), request_id="r2")
    assert not out.ok and out.attempts == 1 and len(calls) == 1
    assert out.error is not None and out.error.code == "xml_error"


def test_retries_stop_at_the_policy_attempts(tmp_path, monkeypatch):
    busy = libvirt.VIR_ERR_RESOURCE_BUSY, libvirt.VIR_FROM_QEMU
    calls = _flaky(monkeypatch, [lv_error(*busy) for _ in range(10)])
    out = _runner(tmp_path, attempts=3).run(_op(), request_id="r3")
    assert not out.ok and out.attempts == 3 and len(calls) == 3
    assert out.error is not None and out.error.code == "resource_busy"


def test_the_first_attempts_time_counts_against_the_retry_deadline(tmp_path, monkeypatch):
    """The first attempt is made before any retry machinery; a slow failed first attempt has
    spent the deadline all the same (the clock jumps 31 s during it; the deadline is 30 s)."""
    busy = libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_FROM_QEMU
    real, skew = time.monotonic, [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: real() + skew[0])
    calls = _flaky(
        monkeypatch,
        [lv_error(*busy) for _ in range(3)],
        each=lambda: skew.__setitem__(0, skew[0] + 31.0),
    )
    out = _runner(tmp_path).run(_op(), request_id="r4")
    assert not out.ok and out.attempts == 1 and len(calls) == 1
    assert out.error is not None and out.error.code == "operation_timeout"


# -- the journal ---------------------------------------------------------------------------
def _before(rid: str) -> tuple[str, dict[str, Any]]:
    return "h.start_vm.before", {"id": str(uuid.uuid4()), "data": {"phase": "before"}}


def test_journal_queues_one_before_per_request_across_restarts(tmp_path):
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    j.receive("r", "start_vm", "vm")
    assert j.start("r", _before("r")) is not None
    j.close()
    j = Journal(path)  # the worker died and came back: the request is run again
    assert j.receive("r", "start_vm", "vm").state == STARTED
    assert j.start("r", _before("r")) is None  # no second `before`
    req = j.get("r")
    assert req is not None and req.runs == 2 and req.deliveries == 2 and req.before_sent
    assert [e.routing_key for e in j.pending()] == ["h.start_vm.before"]
    j.close()


def test_journal_outbox_keeps_order_and_unsent_events_through_prune(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    seqs = [j.enqueue("k", {"id": str(i)}) for i in range(5)]
    j.mark_sent(seqs[:2])
    assert [e.event["id"] for e in j.pending()] == ["2", "3", "4"]
    j.prune(-60)  # a cutoff a minute ahead: every record is past the retention
    assert [e.event["id"] for e in j.pending()] == ["2", "3", "4"]  # unsent are never pruned
    j.close()


def test_journal_adds_the_final_delivery_column_to_an_older_journal(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE requests (request_id TEXT PRIMARY KEY, op TEXT NOT NULL, vm_uuid TEXT,"
        " state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, runs INTEGER NOT NULL"
        " DEFAULT 0, deliveries INTEGER NOT NULL DEFAULT 0, before_sent INTEGER NOT NULL"
        " DEFAULT 0, outcome TEXT, terminal TEXT, received_at REAL NOT NULL, updated_at REAL"
        " NOT NULL);"
        "INSERT INTO requests(request_id, op, state, received_at, updated_at)"
        " VALUES ('r', 'pause_vm', 'started', 0, 0);"
    )
    db.close()
    j = Journal(path)
    req = j.get("r")
    assert req is not None and req.state == STARTED and req.final_delivery is False
    j.mark_final_delivery("r")
    assert j.get("r").final_delivery is True  # type: ignore[union-attr]
    j.finish("r", "fail", ("k", {"id": "e"}))
    assert j.get("r").state == FINISHED  # type: ignore[union-attr]
    j.close()


# -- what the worker reads from a delivery -------------------------------------------------
def test_x_deadline_is_read_or_refused_never_ignored():
    assert _deadline({}) is None
    assert _deadline({"x-deadline": "2030-01-02T03:04:05Z"}) == datetime(
        2030, 1, 2, 3, 4, 5, tzinfo=UTC
    )
    assert _deadline({"x-deadline": datetime(2030, 1, 1)}).tzinfo is UTC  # type: ignore[union-attr]
    for bad in ("soon", "", 12, True, ["2030-01-01"], b"\xff"):
        with pytest.raises(OpError) as exc:
            _deadline({"x-deadline": bad})
        assert exc.value.code == "bad_deadline" and exc.value.source == "validation"


def test_delivery_count_header_is_an_int_or_zero():
    assert _delivery_count({}) == 0
    assert _delivery_count({"x-delivery-count": 3}) == 3
    assert _delivery_count({"x-delivery-count": "3"}) == 0
    assert _delivery_count({"x-delivery-count": True}) == 0


def test_consumer_timeout_is_asked_for_only_where_the_broker_has_it():
    assert not _has_consumer_timeout(b"3.10.8")
    assert not _has_consumer_timeout("3.11.14")
    assert _has_consumer_timeout("3.11.15") and _has_consumer_timeout("3.12.0")
    assert _has_consumer_timeout("4.0.5+2.g1234") and not _has_consumer_timeout(None)
    s = Settings(hook_timeout=30)
    assert _consumer_timeout_ms(s) == (3600 + 120 + 900) * 1000  # longer than any operation
