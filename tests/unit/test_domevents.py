"""Naming libvirt's lifecycle events, and which of them the worker's own operations caused."""

from __future__ import annotations

import libvirt

from worker.domevents import Ownership, describe


def test_lifecycle_events_are_named_with_libvirts_detail_as_the_reason():
    ev = libvirt
    assert describe(ev.VIR_DOMAIN_EVENT_STOPPED, ev.VIR_DOMAIN_EVENT_STOPPED_DESTROYED) == (
        "stopped",
        "destroyed",
    )
    assert describe(ev.VIR_DOMAIN_EVENT_STOPPED, ev.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN) == (
        "stopped",
        "shutdown",
    )
    assert describe(ev.VIR_DOMAIN_EVENT_STARTED, ev.VIR_DOMAIN_EVENT_STARTED_BOOTED) == (
        "started",
        "booted",
    )
    assert describe(ev.VIR_DOMAIN_EVENT_SUSPENDED, ev.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR) == (
        "paused",
        "ioerror",
    )
    assert describe(ev.VIR_DOMAIN_EVENT_SHUTDOWN, ev.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST) == (
        "shutdown",
        "guest",
    )
    assert describe(ev.VIR_DOMAIN_EVENT_UNDEFINED, ev.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED) == (
        "undefined",
        "removed",
    )
    assert describe(ev.VIR_DOMAIN_EVENT_CRASHED, ev.VIR_DOMAIN_EVENT_CRASHED_PANICKED) == (
        "crashed",
        "panicked",
    )


def test_a_stop_nobody_asked_for_is_a_crash():
    ev = libvirt
    assert describe(ev.VIR_DOMAIN_EVENT_STOPPED, ev.VIR_DOMAIN_EVENT_STOPPED_FAILED) == (
        "crashed",
        "failed",
    )
    assert describe(ev.VIR_DOMAIN_EVENT_STOPPED, ev.VIR_DOMAIN_EVENT_STOPPED_CRASHED) == (
        "crashed",
        "crashed",
    )


def test_unknown_codes_still_get_a_word():
    assert describe(999, 7) == ("event999", "detail7")
    assert describe(libvirt.VIR_DOMAIN_EVENT_STARTED, 999) == ("started", "detail999")


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_an_owned_vm_hides_the_states_its_op_causes_until_the_grace_ends():
    clock = Clock()
    own = Ownership(grace_s=2.0, clock=clock)
    assert not own.judge("vm1", "started").suppress
    own.acquire("vm1", "r1", "start_vm")
    clock.t = 101.0
    v = own.judge("vm1", "started")
    assert v.suppress and v.request_id == "r1"
    own.release("vm1", "r1")
    clock.t = 102.5
    assert own.judge("vm1", "resumed").suppress  # late event, within the grace
    clock.t = 103.5
    assert not own.judge("vm1", "started").suppress
    # an event received during the op but read after the grace still counts as owned
    assert own.judge("vm1", "started", at=101.5).suppress


def test_a_state_the_op_does_not_cause_is_published_and_names_the_request():
    own = Ownership(clock=Clock())
    own.acquire("vm1", "r1", "pause_vm")
    v = own.judge("vm1", "stopped")
    assert not v.suppress and v.request_id == "r1"
    v = own.judge("vm1", "crashed")
    assert not v.suppress and v.request_id == "r1"
    own.acquire("vm2", "r2", "some_future_op")  # unknown op: anything but a crash is its own
    assert own.judge("vm2", "stopped").suppress and not own.judge("vm2", "crashed").suppress


def test_an_event_read_after_the_next_op_began_is_judged_by_the_op_it_came_during():
    clock = Clock()
    own = Ownership(grace_s=0.0, clock=clock)  # no grace: only the time of each claim counts
    own.acquire("vm1", "r1", "start_vm")
    clock.t = 100.2
    own.release("vm1", "r1")
    clock.t = 100.3
    own.acquire("vm1", "r2", "pause_vm")
    clock.t = 100.4  # read now, after r2 began: the `started` event came during r1
    v = own.judge("vm1", "started", at=100.1)
    assert v.suppress and v.request_id == "r1"
    # between the two claims nobody owned the VM; during r2, `stopped` is not a pause's
    assert not own.judge("vm1", "started", at=100.25).suppress
    v = own.judge("vm1", "stopped", at=100.35)
    assert not v.suppress and v.request_id == "r2"


def test_release_by_another_request_does_not_end_the_claim():
    clock = Clock()
    own = Ownership(grace_s=1.0, clock=clock)
    own.acquire("vm1", "r2", "destroy_vm")
    own.release("vm1", "r1")
    clock.t = 500.0
    assert own.judge("vm1", "stopped").suppress
