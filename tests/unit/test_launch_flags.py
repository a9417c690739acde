"""The launch flags a start's hooks leave: which reach libvirt, and how a recovered start is
judged by them (libvirt's in-process test driver; no daemon)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from handlers.connection import LibvirtConnection
from handlers.errors import OpError
from handlers.lifecycle import start_flags
from worker import launchflags
from worker.config import Settings
from worker.hooks import HookEngine
from worker.messages import parse_operation
from worker.runner import Runner


def test_createwithflags_flags_pass_and_an_unknown_bit_is_a_validation_error() -> None:
    paused, validate = libvirt.VIR_DOMAIN_START_PAUSED, libvirt.VIR_DOMAIN_START_VALIDATE
    assert start_flags(paused | validate) == paused | validate
    # about restoring a managed-save image, which a start from XML never does: not passed
    restore = libvirt.VIR_DOMAIN_START_FORCE_BOOT | libvirt.VIR_DOMAIN_START_BYPASS_CACHE
    assert start_flags(paused | restore) == paused
    for bad in (1 << 20, paused | 1 << 30, -1):
        with pytest.raises(OpError) as exc:
            start_flags(bad)
        assert (exc.value.code, exc.value.source) == ("bad_launch_flags", "validation")
        assert "VIR_DOMAIN_START_PAUSED (1)" in exc.value.message


def test_a_file_that_is_not_an_integer_is_a_validation_error(tmp_path: Path) -> None:
    launchflags.dump(tmp_path, "vm", 5)
    assert launchflags.path(tmp_path, "vm").read_text() == "5"  # VDSM's format
    assert launchflags.load(tmp_path, "vm") == 5
    launchflags.path(tmp_path, "vm").write_text("paused\n")
    with pytest.raises(OpError) as exc:
        launchflags.load(tmp_path, "vm")
    assert exc.value.code == "bad_launch_flags"
    launchflags.remove(tmp_path, "vm")
    launchflags.remove(tmp_path, "vm")  # gone already: nothing to do
    assert launchflags.load(tmp_path, "vm") is None


@pytest.fixture
def paused_domain() -> Iterator[str]:
    """A domain on the test driver, started and paused (as a hook's START_PAUSED leaves it)."""
    vm = str(uuid.uuid4())
    conn = libvirt.open("test:///default")
    dom = conn.defineXML(
        f"<domain type='test'><name>lf-{vm[:8]}</name><uuid>{vm}</uuid>"
        "<memory>65536</memory><os><type>hvm</type></os></domain>"
    )
    dom.create()
    dom.suspend()
    try:
        yield vm
    finally:
        dom.destroy()
        dom.undefine()
        conn.close()


def test_a_recovered_start_its_hooks_asked_to_be_paused_is_done_once_paused(
    tmp_path: Path, paused_domain: str
) -> None:
    state = tmp_path / "state"
    settings = Settings(host="h", libvirt_uri="test:///default", state_dir=state)
    (tmp_path / "hooks").mkdir(mode=0o755)
    engine = HookEngine(tmp_path / "hooks", state_dir=state / "hooks")
    runner = Runner(settings, LibvirtConnection("test:///default"), engine)
    body = {"version": 1, "op": "start_vm", "vm": {"uuid": paused_domain}}
    op = parse_operation(json.dumps(body).encode(), max_bytes=4096)

    # a first run of it (no flags of a run before): a start asked of a paused VM is refused
    first = runner.run(op, request_id="r1", context={"attempt": 1})
    assert first.error is not None and first.error.code == "bad_state"

    # the worker died after its hooks had asked for START_PAUSED and libvirt had started it
    launchflags.dump(state / "hooks", paused_domain, libvirt.VIR_DOMAIN_START_PAUSED)
    again = runner.run(op, request_id="r1", context={"attempt": 2})
    assert (again.ok, again.noop, again.state) == (True, True, "paused"), again.error
    assert not launchflags.path(state / "hooks", paused_domain).exists()  # removed after the run


def test_a_start_no_hook_can_see_writes_no_file_and_starts_as_asked(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = Settings(host="h", libvirt_uri="test:///default", state_dir=state)
    (tmp_path / "hooks").mkdir(mode=0o755)
    engine = HookEngine(tmp_path / "hooks", state_dir=state / "hooks")
    runner = Runner(settings, LibvirtConnection("test:///default"), engine)
    vm = str(uuid.uuid4())
    spec = {"uuid": vm, "name": f"lf-{vm[:8]}", "memory_mib": 64, "vcpus": 1}
    body = {"version": 1, "op": "start_vm", "vm": spec, "params": {"paused": True}}
    op = parse_operation(json.dumps(body).encode(), max_bytes=4096)
    out = runner.run(op, request_id="r1", context={"attempt": 1})
    try:
        assert (out.ok, out.state) == (True, "paused"), out.error  # params.paused still applies
        assert not (state / "hooks" / vm).exists()  # no file, not even its directory
    finally:
        conn = libvirt.open("test:///default")
        dom = conn.lookupByUUIDString(vm)
        dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()
        conn.close()
