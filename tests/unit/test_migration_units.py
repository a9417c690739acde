"""migrate_vm's pieces without a second host: its message, the progress it reports, and how the
destination's claim on an incoming VM lasts until the migration is over."""

from __future__ import annotations

import json
import uuid

import pytest

from handlers.errors import OpError
from handlers.migration import progress_of
from worker.domevents import Ownership
from worker.messages import parse_operation

UUID = str(uuid.uuid4())


def _parse(params: dict[str, object]) -> object:
    body = {"version": 1, "op": "migrate_vm", "vm": {"uuid": UUID}, "params": params}
    return parse_operation(json.dumps(body).encode(), max_bytes=1 << 20)


def test_migrate_vm_defaults_and_the_destination_in_every_event() -> None:
    op = _parse({"destination": "host-b"})
    p = op.params  # type: ignore[attr-defined]
    assert (p.live, p.auto_converge, p.postcopy, p.timeout_s, p.copy_storage) == (
        True,
        False,
        False,
        600.0,
        "none",
    )
    assert (p.persist_destination, p.undefine_source, p.unsafe) == (True, True, False)
    assert op.event_data() == {"destination": "host-b"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"destination": "host.b"},
        {"destination": "b", "copy_storage": "inc"},
        {"destination": "b", "postcopy_after_s": 5},
        {"destination": "b", "timeout_s": 0},
    ],
)
def test_a_migration_message_the_worker_cannot_run_is_refused(params: dict[str, object]) -> None:
    with pytest.raises(OpError):
        _parse(params)


def test_progress_is_libvirts_job_stats_in_the_contracts_words() -> None:
    got = progress_of(
        {
            "data_total": 100 << 20,
            "data_processed": 30 << 20,
            "data_remaining": 75 << 20,
            "memory_bps": 50 << 20,
            "memory_dirty_rate": 1200,
            "memory_iteration": 2,
            "downtime": 300,
        }
    )
    assert got == {
        "data_processed_bytes": 30 << 20,
        "data_remaining_bytes": 75 << 20,
        "data_total_bytes": 100 << 20,
        "bandwidth_mib_s": 50.0,
        "dirty_rate_pages_s": 1200,
        "iteration": 2,
        "expected_downtime_ms": 300,
        "percent": 25.0,
    }
    # copying disks first: no `data_*` yet, memory and disk counted together
    early = progress_of({"disk_total": 8 << 20, "disk_remaining": 6 << 20, "memory_total": 0})
    assert (early["data_total_bytes"], early["percent"]) == (8 << 20, 25.0)
    assert progress_of({})["percent"] == 0.0
    starting = progress_of({"disk_total": 8 << 20, "disk_processed": 2 << 20})
    assert starting["percent"] == 25.0


def test_the_destinations_claim_holds_while_the_vm_arrives_and_ends_with_the_migration() -> None:
    now = [100.0]
    own = Ownership(grace_s=2.0, clock=lambda: now[0])
    own.acquire("vm", "m1.prepare", "prepare_incoming")
    own.release("vm", "m1.prepare", hold_s=60.0)
    now[0] += 30  # the VM arrives half a minute later: its events are the migration's
    assert own.judge("vm", "started").suppress
    assert own.judge("vm", "resumed").suppress
    crash = own.judge("vm", "crashed")
    assert not crash.suppress and crash.request_id == "m1.prepare"
    own.acquire("vm", "m1.finish", "finish_incoming")
    own.end("vm")  # finish_incoming ran: the hold is over
    now[0] += 3
    assert own.owner("vm") is None
    assert not own.judge("vm", "stopped").suppress


def test_each_param_is_its_libvirt_flag_and_a_tls_peer_encrypts_the_stream() -> None:
    import libvirt

    from handlers.migration import _flags

    op = _parse({"destination": "b"})
    p = op.params  # type: ignore[attr-defined]
    assert (
        _flags(p)
        == (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST)
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    assert _flags(p, tls=True) & libvirt.VIR_MIGRATE_TLS
    every = _parse(
        {
            "destination": "b",
            "live": False,
            "auto_converge": True,
            "postcopy": True,
            "copy_storage": "all",
            "persist_destination": False,
            "undefine_source": False,
            "unsafe": True,
        }
    ).params  # type: ignore[attr-defined]
    assert _flags(every) == (
        libvirt.VIR_MIGRATE_AUTO_CONVERGE
        | libvirt.VIR_MIGRATE_POSTCOPY
        | libvirt.VIR_MIGRATE_NON_SHARED_DISK
        | libvirt.VIR_MIGRATE_UNSAFE
    )
