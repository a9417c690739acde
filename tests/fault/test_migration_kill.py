"""kill -9 of either host's worker in the middle of a live migration between two real hosts:
once it is back, the migration has exactly one terminal event, the VM runs on exactly one host,
and a migration that completed is never run again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hosts import PrivateLibvirtd, TwoHosts, where
from tests.integration.test_migration import LOCAL, disk, hook, migrate, of_type
from tests.support import Env, EventTap, wait_for

pytestmark = [
    pytest.mark.fault,
    pytest.mark.qemu,
    pytest.mark.migration,
    pytest.mark.timeout(240),
]
__all__ = ["disk"]  # the fixture, used here too


def _kill9_mid_migration(
    env: Env, tap: EventTap, h: TwoHosts, disk: Any, victim: str
) -> tuple[Any, str]:
    """Both workers up (host `victim`'s a process), a VM with a 12 MiB local disk migrating
    a → b at 1 MiB/s, `victim`'s worker killed -9 once the copy is under way (~12 s, the kill
    lands in the middle of it): the VM and the migration's request id."""
    h.start_both(process=victim)
    tag = "k9src" if victim == h.a else "k9dst"
    vm = h.running_vm(tap, tag, disks=[{"path": disk(LOCAL, 12)}])
    rid = migrate(env, h, vm, h.b, bandwidth_mib_s=1, copy_storage="all")
    tap.wait(
        lambda: [
            e
            for e in of_type(tap, f"{h.a}.migrate_vm.progress", rid)
            if e["data"]["progress"]["data_total_bytes"] > 0
        ],
        60,
    )
    h.workers[victim].kill9()
    return vm, rid


def test_kill9_of_the_source_worker_mid_migration_ends_it_once(
    env: Env, tap: EventTap, two_hosts: TwoHosts, disk: Any
) -> None:
    h = two_hosts
    vm, rid = _kill9_mid_migration(env, tap, h, disk, h.a)
    h.start(h.a, process=True)
    term = tap.wait_terminal(rid, 120)["data"]
    # libvirt ends the dead worker's migration (the destination drops a half-received VM
    # when its client goes); the worker waits for that, finds the VM still here, runs it again
    assert term["phase"] == "after", term.get("error")
    assert term["recovered"] is True
    assert where(h, vm["uuid"]) == {h.a: "undefined", h.b: "running"}
    assert len(tap.terminal(rid)) == 1
    assert len([e for e in tap.of(rid) if e["data"]["phase"] == "before"]) == 1


def test_kill9_of_the_destination_worker_mid_migration_does_not_stop_it(
    env: Env, tap: EventTap, two_hosts: TwoHosts, disk: Any
) -> None:
    h = two_hosts
    # its part (prepare_incoming) is done when it dies; libvirt moves the VM
    vm, rid = _kill9_mid_migration(env, tap, h, disk, h.b)
    term = tap.wait_terminal(rid, 120)["data"]
    assert term["phase"] == "after", term.get("error")
    assert where(h, vm["uuid"]) == {h.a: "undefined", h.b: "running"}
    # back, it runs its part's end from its queue: the after chain, once
    h.start(h.b, process=True)
    tap.wait(lambda: of_type(tap, f"{h.b}.finish_incoming.after", rid), 60)
    assert len(tap.terminal(f"{rid}.finish")) == 1


def test_kill9_of_the_source_worker_after_the_vm_moved_never_migrates_it_again(
    env: Env, tap: EventTap, two_hosts: TwoHosts, tmp_path: Path
) -> None:
    h = two_hosts
    mark = tmp_path / "in-after-hook"
    arrived = tmp_path / "destination-after-chain"
    hook(h.hooks[h.a], "after_vm_migrate_source", "50_slow", f"touch {mark}; sleep 60")
    hook(h.hooks[h.b], "after_vm_migrate_destination", "50_log", f"echo ran >> {arrived}")
    h.start_both(process=h.a)
    vm = h.running_vm(tap, "k9done")
    rid = migrate(env, h, vm, h.b)
    wait_for(mark.exists, 60, "the source's after chain")  # libvirt's part is over
    h.workers[h.a].kill9()
    (h.hooks[h.a] / "after_vm_migrate_source" / "50_slow").unlink()
    h.start(h.a, process=True)
    term = tap.wait_terminal(rid, 120)["data"]
    assert term["phase"] == "after" and term["noop"] is True and term["recovered"] is True
    assert where(h, vm["uuid"]) == {h.a: "undefined", h.b: "running"}
    assert len(tap.terminal(rid)) == 1
    # the dead run had told the destination: the recovered one's copy is a duplicate there
    tap.wait(lambda: tap.terminal(f"{rid}.finish", include_duplicates=True)[1:], 30)
    assert len(tap.terminal(f"{rid}.finish")) == 1
    assert arrived.read_text().splitlines() == ["ran"]


@pytest.fixture
def libvirt_hook_b(second_libvirtd: PrivateLibvirtd) -> Iterator[Path]:
    """Host b's libvirt qemu hook script (tests/hosts.py), removed at the end."""
    path = second_libvirtd.qemu_hook
    yield path
    path.unlink(missing_ok=True)


def test_kill9_of_the_source_worker_before_it_told_the_destination_tells_it_once_back(
    env: Env, tap: EventTap, two_hosts: TwoHosts, tmp_path: Path, libvirt_hook_b: Path
) -> None:
    h = two_hosts
    h.start_both(process=h.b)
    vm = h.running_vm(tap, "k9tell", on=h.b)
    stopping, go = tmp_path / "source-qemu-stopping", tmp_path / "go"
    # libvirtd b stops the source's QEMU once the VM runs on a, inside virDomainMigrate3: its
    # hook holds the call there, before the worker can send finish_incoming (60 s at most)
    libvirt_hook_b.write_text(
        f'#!/bin/sh\n[ "$1" = "{vm["name"]}" ] && [ "$2" = stopped ] || exit 0\n'
        f"touch {stopping}\n"
        f"i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n"
    )
    libvirt_hook_b.chmod(0o755)
    arrived = tmp_path / "destination-after-chain"
    hook(h.hooks[h.a], "after_vm_migrate_destination", "50_log", f"echo ran >> {arrived}")
    rid = migrate(env, h, vm, h.a)
    wait_for(stopping.exists, 60, "libvirtd b stopping the source's QEMU")
    h.workers[h.b].kill9()
    go.touch()
    h.start(h.b, process=True)
    term = tap.wait_terminal(rid, 120)["data"]
    assert term["phase"] == "after" and term["noop"] is True and term["recovered"] is True
    assert where(h, vm["uuid"]) == {h.a: "running", h.b: "undefined"}
    assert len(tap.terminal(rid)) == 1
    # the destination's part ended: its after chain ran, once
    tap.wait(lambda: of_type(tap, f"{h.a}.finish_incoming.after", rid), 30)
    assert len(tap.terminal(f"{rid}.finish", include_duplicates=True)) == 1
    assert arrived.read_text().splitlines() == ["ran"]
