"""Fixtures shared by the integration tests: a real RabbitMQ and real libvirt, nothing mocked."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.hosts import PrivateLibvirtd, TwoHosts, private_libvirtds, two_workers
from tests.identities import Identities
from tests.support import (
    BROKER,
    QEMU_URI,
    Env,
    EventTap,
    ThreadWorker,
    broker_conn,
    delete_topology,
    libvirt_cleanup,
    unique,
)


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """CLI commands configure structlog globally; no test may inherit another's set-up."""
    yield
    structlog.reset_defaults()


def forkservers() -> list[int]:
    """The hook fork servers (worker/hooks/forkserver.py) this process started and that still
    run: what an engine (a worker's, a test's) leaves behind when nobody stops it."""
    me, found = os.getpid(), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == me and b"forkserver.py" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


@pytest.fixture(scope="module", autouse=True)
def _no_forkserver_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each module stops every hook engine and worker it starts: none of its fork servers may
    outlive it (they are ended here, so that the next module is judged on its own)."""
    yield
    left = forkservers()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    assert not left, f"{request.module.__name__} left {len(left)} hook fork server(s) running"


@pytest.fixture(scope="session")
def broker() -> None:
    """RabbitMQ must answer; `make test` starts it (scripts/bootstrap broker)."""
    try:
        with broker_conn() as conn:
            conn.ensure_connection(max_retries=3)
    except Exception as exc:  # pragma: no cover - the environment, not the code
        pytest.fail(f"RabbitMQ does not answer on 127.0.0.1:5672 ({exc}); run scripts/bootstrap")


@pytest.fixture(scope="session")
def qemu() -> str:
    """A real qemu:///system libvirtd; `make test` starts it (scripts/bootstrap libvirtd)."""
    rc = subprocess.run(["virsh", "-c", QEMU_URI, "version"], capture_output=True, timeout=30)
    if rc.returncode != 0:
        pytest.fail(f"no libvirtd on {QEMU_URI}: {rc.stderr.decode()[-500:]}")
    return QEMU_URI


@pytest.fixture
def hooks_root(tmp_path: Path) -> Path:
    """An empty hooks root (mode 0755, owned by us) a test may fill."""
    root = tmp_path / "hooks"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    return root


@pytest.fixture
def env(broker: None, tmp_path: Path, hooks_root: Path) -> Iterator[Env]:
    e = Env(
        prefix=unique("t"), host=unique("h"), state_dir=tmp_path / "state", hooks_root=hooks_root
    )
    try:
        yield e
    finally:
        delete_topology(e.prefix, [e.host, *e.other_hosts])


@pytest.fixture
def tap(env: Env) -> Iterator[EventTap]:
    t = EventTap(env.topology).start()
    yield t
    t.stop()
    assert not t.invalid, f"events not as `vmworker schema --events` says: {t.invalid[:3]}"


@pytest.fixture
def start_worker(env: Env) -> Iterator[Any]:
    """start_worker(**settings) -> a started ThreadWorker; stopped at the end of the test."""
    workers: list[ThreadWorker] = []

    def start(**kw: Any) -> ThreadWorker:
        w = ThreadWorker(env.settings(**kw)).start()
        workers.append(w)
        return w

    yield start
    for w in workers:
        if w.thread.is_alive():
            w.stop()


@pytest.fixture
def test_domains() -> Iterator[list[str]]:
    with libvirt_cleanup("test:///default") as uuids:
        yield uuids


@pytest.fixture
def qemu_domains(qemu: str) -> Iterator[list[str]]:
    with libvirt_cleanup(qemu) as uuids:
        yield uuids


@pytest.fixture
def have_virt_xml_validate() -> str:
    path = shutil.which("virt-xml-validate")
    if path is None:
        pytest.fail("virt-xml-validate missing (Debian libvirt-clients); run scripts/bootstrap")
    return path


@pytest.fixture
def rabbit_node(tmp_path: Path) -> Iterator[Any]:
    """rabbit_node(**kw) -> a started private RabbitNode (tests/brokers.py); always stopped."""
    from tests.brokers import RabbitNode

    nodes: list[RabbitNode] = []

    def make(**kw: Any) -> RabbitNode:
        node = RabbitNode(tmp_path, **kw)
        nodes.append(node)
        return node.start()

    try:
        yield make
    finally:
        for node in reversed(nodes):
            node.stop()


@pytest.fixture
def identities() -> Iterator[Identities]:
    """The broker identities (tests/identities.py) a test grants; every one revoked at the end."""
    ids = Identities(BROKER)
    try:
        yield ids
    finally:
        ids.revoke_all()


@pytest.fixture(scope="session")
def second_libvirtd(qemu: str) -> Iterator[PrivateLibvirtd]:
    """A second libvirt host on this machine (tests/hosts.py), for the tests marked
    `migration`; stopped at the end with every domain it ran, even when a test failed."""
    with private_libvirtds("hostb", None) as (host,):
        yield host


@pytest.fixture
def host_b_uri(second_libvirtd: PrivateLibvirtd) -> str:
    return second_libvirtd.uri


@pytest.fixture
def two_hosts(
    env: Env, tmp_path: Path, qemu: str, second_libvirtd: PrivateLibvirtd
) -> Iterator[TwoHosts]:
    """Workers `a` (qemu:///system) and `b` (the second libvirtd), not started: `start(host)`.
    Every domain either host runs at the end is destroyed; both workers are stopped."""
    with two_workers(
        env, tmp_path, qemu, second_libvirtd.uri, second_libvirtd.base / "lib"
    ) as hosts:
        yield hosts
