"""A set_ticket password is in no report: not in an event (tap and events stream), not in the
worker's log, not in `vmworker history`, not in a dead letter's headers, and not in what hooks
printed, even a hook that reads it back from libvirt. Real worker process, RabbitMQ, QEMU."""

from __future__ import annotations

import json
import uuid
from typing import Any

import libvirt
import pytest
from click.testing import CliRunner

from tests.support import (
    BROKER,
    QEMU_URI,
    ProcessWorker,
    broker_conn,
    drain_queue,
    read_stream,
    small_vm,
    write_hook,
)
from worker.cli import main

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(150)]

# prints the password libvirt holds (security info) on stdout and stderr, then fails (reports)
LEAK_HOOK = """#!/bin/sh
virsh -c qemu:///system dumpxml --security-info "$vmId" | grep -o "passwd='[^']*'"
virsh -c qemu:///system dumpxml --security-info "$vmId" | grep -o "passwd='[^']*'" >&2
exit 1
"""
# everything a hook is given: its environment and its payload
SHOW_HOOK = """#!/bin/sh
env >&2
cat "$_hook_domxml"
exit {rc}
"""


def _cli(env: Any, *args: str) -> str:
    res = CliRunner().invoke(
        main, [*args, "--broker", BROKER, "--prefix", env.prefix, "--idle", "0.3"]
    )
    assert res.exit_code == 0, res.output
    return res.stdout


def test_a_display_password_is_redacted_from_every_report(
    env, tap, hooks_root, tmp_path, qemu_domains
):
    write_hook(hooks_root, "before_vm_set_ticket", "50_show", SHOW_HOOK.format(rc=0))
    write_hook(hooks_root, "after_vm_set_ticket", "50_leak", LEAK_HOOK)
    write_hook(hooks_root, "after_vm_set_ticket_fail", "50_show", SHOW_HOOK.format(rc=1))
    env.libvirt_uri = QEMU_URI
    spec = {**small_vm("secret"), "graphics": {"type": "vnc", "password": "initial"}}
    qemu_domains.append(spec["uuid"])
    ref = {"uuid": spec["uuid"]}
    ok_pw = "S" + uuid.uuid4().hex[:7]  # VNC: 8 characters at most
    long_pw = "L" + uuid.uuid4().hex[:15]  # too long for VNC: fails once running
    bad_core = "B" + uuid.uuid4().hex[:15]
    bad_pw = bad_core + "\x07"  # not printable: the message is refused
    passwords = (ok_pw, long_pw, bad_core)

    log = tmp_path / "worker.log"
    w = ProcessWorker(env, log, log_level="debug").start()
    try:
        start = env.publish("start_vm", spec)
        assert tap.wait_terminal(start, timeout=60)["data"]["phase"] == "after"
        ok = env.publish("set_ticket", ref, params={"password": ok_pw, "valid_s": 60})
        long = env.publish("set_ticket", ref, params={"password": long_pw})
        bad = env.publish("set_ticket", ref, params={"password": bad_pw})
        done = tap.wait_terminal(ok, timeout=60)["data"]
        failed = tap.wait_terminal(long, timeout=60)["data"]
        refused = tap.wait_terminal(bad, timeout=60)["data"]
        with broker_conn() as c:
            dead = drain_queue(c, env.topology.dead_queue.name, expect=2)
    finally:
        w.stop()

    # the ticket is set: libvirt has the password
    dom = libvirt.open(QEMU_URI).lookupByUUIDString(spec["uuid"])
    assert f"passwd='{ok_pw}'" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
    assert done["phase"] == "after", done.get("error")
    assert failed["phase"] == "fail" and failed["error"]["code"] == "password_too_long"
    assert refused["phase"] == "fail" and refused["error"]["source"] == "validation"

    # the hook that read it back printed it: the worker reports it masked
    (leak,) = [h for h in done["hooks"] if h["name"] == "50_leak"]
    assert leak["rc"] == 1 and "passwd='***'" in leak["stderr_tail"]
    assert "passwd='***'" in leak["stdout_tail"]
    # hooks are given no password at all: the environment and payload they printed
    for data in (done, failed):
        shown = [h for h in data["hooks"] if h["name"] == "50_show"]
        assert shown and "vmId=" in shown[0]["stderr_tail"] and "<domain" in shown[0]["stdout_tail"]

    # the dead letters keep the message whole (for replay), never in their headers
    assert len(dead) == 2
    assert {m.properties.get("message_id") for m in dead} == {long, bad}
    for m in dead:
        assert m.headers.get("x-vmworker-reason")
        body = m.body if isinstance(m.body, str) else m.body.decode()
        assert any(pw in body for pw in passwords)  # the body is the original

    with broker_conn() as c:
        stream = [str(m.body) for m in read_stream(c, f"{env.prefix}.events.log")]
    history = [
        _cli(env, "history", "--request-id", r, *j)
        for r in (ok, long, bad)
        for j in ((), ("--json",))
    ]
    history.append(_cli(env, "history", "--vm", spec["uuid"], "--json"))
    assert json.loads(history[1])[0]["body"]["params"]["password"] == "***"

    reports = {
        "events (tap)": json.dumps(tap.events),
        "events (stream)": "\n".join(stream),
        "worker log": log.read_text(errors="replace"),
        "history": "\n".join(history),
        "dead-letter headers": json.dumps([m.headers for m in dead], default=str),
    }
    assert len(stream) >= 7 and "set_ticket" in reports["worker log"]
    for where, text in reports.items():
        for pw in passwords:
            assert pw not in text, f"{where} shows a password"
