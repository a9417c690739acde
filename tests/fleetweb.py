"""A test fleet for the fleet server's HTTP side: two real workers on `test:///default` (two host
ids, a private prefix), a hook that fails one VM's start with output on stdout and stderr, the
real ingest following the real streams into a SQLite store, and the app served by uvicorn on a
free port of 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import libvirt
import uvicorn

from tests.support import (
    BROKER,
    Env,
    EventTap,
    ProcessWorker,
    ThreadWorker,
    delete_topology,
    libvirt_cleanup,
    small_vm,
    unique,
    wait_for,
)
from worker.config import Settings

HOOK_STDERR = "quota exceeded: storage pool gold-7 is full"
HOOK_STDOUT = "checking quota of pool gold-7"
TOKEN = "s3cret-fleet-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Fleet:
    env: Env
    settings: Settings  # the fleet server's
    url: str
    host_b: str
    vms: dict[str, dict[str, Any]]  # role -> spec (good, paused, bad, other)
    requests: dict[str, str]  # role -> request id
    hook: Path
    tap: EventTap
    workers: list[ThreadWorker] = field(default_factory=list)
    live: Any = None
    engine: Any = None

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def get(self, path: str, **params: Any) -> Any:
        with self.client() as c:
            r = c.get(path, params=params)
            r.raise_for_status()
            return r.json()

    def wait_stored(self, request_id: str, result: str, timeout: float = 20.0) -> dict[str, Any]:
        """The request as the store tells it, once its result is `result`."""

        def done() -> Any:
            with self.client() as c:
                r = c.get(f"/api/v1/requests/{request_id}")
            return r.json() if r.status_code == 200 and r.json().get("result") == result else None

        return wait_for(done, timeout, f"request {request_id} stored as {result}")


def _fail_hook(hooks_root: Path, bad_uuid: str) -> Path:
    point = hooks_root / "before_vm_start"
    point.mkdir(mode=0o755, exist_ok=True)
    hook = point / "50_quota"
    hook.write_text(
        "#!/bin/sh\n"
        f'if [ "$vmId" = "{bad_uuid}" ]; then\n'
        f'  echo "{HOOK_STDOUT}"; echo "{HOOK_STDERR}" >&2; exit 2\n'
        "fi\n"
    )
    hook.chmod(0o755)
    return hook


@contextmanager
def running_fleet(
    env: Env, tap: EventTap, test_domains: list[str], tmp_path: Path, *, token: str | None = TOKEN
) -> Iterator[Fleet]:
    """The fleet, its store filled through the real path, and the server answering."""
    from worker.fleet.app import create_app
    from worker.fleet.ingest import Ingest
    from worker.fleet.live import Broadcaster
    from worker.fleet.store import open_store

    host_b = unique("hb")
    env.other_hosts.append(host_b)
    vms = {role: small_vm(f"fw-{role}") for role in ("good", "paused", "bad", "gone", "other")}
    test_domains += [vms[r]["uuid"] for r in ("good", "paused", "bad", "gone")]  # B's: its own
    hook = _fail_hook(env.hooks_root, vms["bad"]["uuid"])
    fleet_settings = env.settings(fleet={"token": token, "token_name": "test-operator"})
    # host B in a process of its own: test:///default is one per process, so each host has
    # its own domains (and its own libvirt events)
    worker_b = ProcessWorker(
        env, tmp_path / "worker-b.log", host=host_b, state_dir=tmp_path / "state-b"
    ).start()
    workers = [ThreadWorker(env.settings()).start()]
    workers[0].service.ownership.grace_s = 0.2  # soon, a change is someone else's
    engine = open_store(f"sqlite:///{tmp_path / 'fleet.db'}")
    live = Broadcaster()
    stop = threading.Event()
    ingest = Ingest(engine, fleet_settings, on_commit=live.publish, poll_interval=1.0)
    ingest_thread = threading.Thread(target=ingest.run, args=(stop,), daemon=True)
    ingest_thread.start()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(engine, fleet_settings, broadcaster=live),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    server_thread = threading.Thread(target=server.run, daemon=True)
    server_thread.start()
    try:
        wait_for(lambda: server.started, 20, "the fleet server to listen")
        b_topo_env = Env(env.prefix, host_b, tmp_path / "state-b", env.hooks_root)
        rq: dict[str, str] = {}
        rq["good"] = env.publish("start_vm", vms["good"])
        rq["paused_start"] = env.publish("start_vm", vms["paused"])
        tap.wait_terminal(rq["paused_start"])
        rq["paused"] = env.publish("pause_vm", {"uuid": vms["paused"]["uuid"]})
        rq["bad"] = env.publish("start_vm", vms["bad"])
        rq["other"] = b_topo_env.publish("start_vm", vms["other"])
        tap.wait_terminal(rq["other"])
        rq["other_stop"] = b_topo_env.publish(
            "shutdown_vm", {"uuid": vms["other"]["uuid"]}, params={"timeout": 1, "force": True}
        )
        rq["gone"] = env.publish("start_vm", vms["gone"])
        for rid in rq.values():
            tap.wait_terminal(rid)
        # a guest destroyed behind the worker's back: only a state event tells
        owner = workers[0].service.ownership
        wait_for(lambda: owner.owner(vms["gone"]["uuid"]) is None, 10, "the claim to end")
        libvirt.open("test:///default").lookupByUUIDString(vms["gone"]["uuid"]).destroy()
        tap.wait(lambda: [e for e in tap.events if e["type"] == "vmworker.state.stopped"])
        fleet = Fleet(
            env, fleet_settings, f"http://127.0.0.1:{port}", host_b, vms, rq, hook, tap,
            workers, live, engine,
        )  # fmt: skip
        fleet.wait_stored(rq["bad"], "failed")
        for role in ("good", "paused", "other_stop"):
            fleet.wait_stored(rq[role], "ok")
        yield fleet
    finally:
        server.should_exit = True
        server_thread.join(10)
        stop.set()
        ingest_thread.join(15)
        for w in workers:
            if w.thread.is_alive():
                w.stop()
        worker_b.stop()
        engine.dispose()


@contextmanager
def module_fleet(base: Path, *, token: str | None = TOKEN) -> Iterator[Fleet]:
    """`running_fleet` with its own world (prefix, hosts, hooks root, cleanup): for a fixture
    shared by a module's tests."""
    hooks_root = base / "hooks"
    hooks_root.mkdir(mode=0o755)
    hooks_root.chmod(0o755)
    env = Env(prefix=unique("t"), host=unique("h"), state_dir=base / "state", hooks_root=hooks_root)
    env.extra["broker"] = BROKER
    tap = EventTap(env.topology).start()
    try:
        with (
            libvirt_cleanup("test:///default") as domains,
            running_fleet(env, tap, domains, base, token=token) as fleet,
        ):
            yield fleet
    finally:
        tap.stop()
        delete_topology(env.prefix, [env.host, *env.other_hosts])
