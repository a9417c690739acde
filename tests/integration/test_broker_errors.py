"""Every CLI command that talks to the broker turns a broker it cannot use into one line naming
the URL (password hidden) and what to check, exit code 2; the worker logs each node it tried.
The real `vmworker` command, as a process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import free_port
from tests.reliability import wait_for

BOUND = 30.0  # seconds a command may take to give up (the connect timeout is 5 s)
SECRET = "pw-never-shown"


def _clean_env() -> dict[str, str]:
    """This environment without VMWORKER_* settings: each test says what it means."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VMWORKER_")}


def _vmworker(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        timeout=BOUND + 30,
        env={**_clean_env(), **(env or {})},
    )
    return res.returncode, res.stdout, res.stderr, time.monotonic() - started


def _commands(url: str) -> dict[str, list[str]]:
    """Each command that talks to the broker, pointed at `url`."""
    vm = str(uuid.uuid4())
    return {
        "publish": ["publish", "--host", "h1", "start_vm", "--vm-uuid", vm, "--broker", url],
        "events": ["events", "--idle", "0.2", "--broker", url],
        "history": ["history", "--vm", vm, "--broker", url],
        "replay": ["replay", "--vm", vm, "--broker", url],
        "monitor": ["monitor", "--once", "--broker", url],
        "broker setup": ["broker", "setup", "--broker", url],
    }


def _assert_one_line(rc: int, out: str, err: str, took: float, shown: str, *words: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1, err  # no traceback
    assert shown in lines[0] and SECRET not in err + out, lines[0]
    assert all(w in lines[0] for w in words), lines[0]
    assert took < BOUND, took
    return lines[0]


def _fails_in_one_line(url: str, command: str, *words: str, shown: str | None = None) -> str:
    """`command` pointed at broker `url` gives up in one line that names the URL with its
    password hidden (`shown`, else all of `url`) and `words`."""
    rc, out, err, took = _vmworker(*_commands(url)[command])
    return _assert_one_line(rc, out, err, took, shown or url.replace(SECRET, "***"), *words)


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung broker)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    t.join(5)
    for s in held:
        s.close()
    srv.close()


@pytest.mark.parametrize("command", list(_commands("x")))
def test_every_command_says_in_one_line_that_nothing_listens_on_a_closed_port(command):
    url = f"amqp://guest:{SECRET}@127.0.0.1:{free_port()}//"
    _fails_in_one_line(url, command, "connection refused", "running")


def test_an_unknown_host_name_is_named_as_a_dns_failure():
    url = f"amqp://guest:{SECRET}@nosuchhost.invalid:5672//"
    for command in ("publish", "events"):
        _fails_in_one_line(url, command, "host name", "DNS")


def test_a_wrong_password_is_an_authentication_failure():
    url = f"amqp://guest:{SECRET}@127.0.0.1:5672//"
    for command in ("publish", "replay"):
        _fails_in_one_line(url, command, "authentication", "password")


def test_tls_to_a_plain_port_is_a_tls_mismatch():
    url = f"amqps://guest:{SECRET}@127.0.0.1:5672//"
    for command in ("publish", "history"):
        _fails_in_one_line(url, command, "TLS", "5671")


def test_a_broker_that_accepts_but_never_answers_times_out(silent_listener):
    _fails_in_one_line(
        f"amqp://guest:{SECRET}@127.0.0.1:{silent_listener}//", "publish", "no answer"
    )


def test_every_node_of_a_failover_list_is_tried_and_named():
    a, b = free_port(), free_port()
    url = f"amqp://guest:{SECRET}@127.0.0.1:{a}//;amqp://guest:{SECRET}@127.0.0.1:{b}//"
    line = _fails_in_one_line(url, "events", "refused", shown=f"amqp://guest:***@127.0.0.1:{b}//")
    assert f"amqp://guest:***@127.0.0.1:{a}//" in line


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ({"VMWORKER_BROKER": f"amqp://guest:{SECRET}@127.0.0.1:56x2//"}, "Port"),
        ({"VMWORKER_BROKER": f"http://guest:{SECRET}@127.0.0.1//"}, "amqp://"),
        ({"VMWORKER_SSL_CA": "/etc/hostname"}, "not amqps"),
    ],
)
def test_a_configuration_that_cannot_work_stops_run_before_anything_starts(
    tmp_path: Path, flags: dict[str, str], words: str
):
    state, hooks = tmp_path / "state", tmp_path / "hooks"
    hooks.mkdir(mode=0o755)
    hooks.chmod(0o755)
    marker = tmp_path / "chain-ran"
    point = hooks / "before_vmworker_start"
    point.mkdir(mode=0o755)
    hook = point / "10_mark"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    rc, out, err, took = _vmworker(
        "run",
        "--host",
        "h1",
        "--libvirt",
        "test:///default",
        "--hooks",
        str(hooks),
        "--state-dir",
        str(state),
        env={"VMWORKER_BROKER": f"amqp://guest:{SECRET}@127.0.0.1:5672//", **flags},
    )
    line = _assert_one_line(rc, out, err, took, "bad configuration", words)
    assert "***" in line or "ssl" not in words
    assert not state.exists() and not marker.exists()  # no journal, no hook chain
    assert "worker starting" not in out + err


def test_the_worker_logs_each_node_it_tries_with_its_url(tmp_path: Path):
    a, b = free_port(), free_port()
    nodes = [f"amqp://guest:{SECRET}@127.0.0.1:{p}//" for p in (a, b)]
    hooks = tmp_path / "hooks"
    hooks.mkdir(mode=0o755)
    hooks.chmod(0o755)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--libvirt", "test:///default"],
            env={
                **_clean_env(),
                "VMWORKER_HOST": "h1",
                "VMWORKER_BROKER": ";".join(nodes),
                "VMWORKER_HOOKS_ROOT": str(hooks),
                "VMWORKER_STATE_DIR": str(tmp_path / "state"),
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def attempts() -> list[dict[str, Any]]:
            lines = log.read_text(errors="replace").splitlines()
            evs = [json.loads(ln) for ln in lines if ln.startswith("{")]
            got = [e for e in evs if e.get("event") == "broker.unreachable"]
            return got if len(got) >= 4 else []  # both nodes, twice

        tried = wait_for(attempts, 30, "two rounds of connection attempts")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert [(e["url"], e["node"]) for e in tried[:4]] == [
        (f"amqp://guest:***@127.0.0.1:{a}//", "1/2"),
        (f"amqp://guest:***@127.0.0.1:{b}//", "2/2"),
    ] * 2
    assert all(e["error"] == "connection refused" for e in tried)
    assert SECRET not in log.read_text()
