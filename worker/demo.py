"""`vmworker demo`: the whole path in one process and no services.

The worker consumes from kombu's in-memory broker and runs on libvirt's in-process test driver,
with the repo's hook directories; the demo publishes operations like a control plane and prints
every event it receives, as monitoring would see them.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
from kombu import Connection
from lxml import etree
from rich.console import Console

from worker import logs
from worker.config import REPO_HOOKDIRS, Settings
from worker.publish import build_body, publish_op
from worker.subscribe import live_queue, read_events
from worker.topology import Topology

HOST = "demo-host"
MEMORY_OPTS = {"polling_interval": 0.01}


def _steps(vm_uuid: str) -> list[tuple[str, str, bytes | dict[str, Any], str]]:
    """(title, op, body, expected phase)"""
    ref = {"uuid": vm_uuid, "name": "web-1"}
    spec = {**ref, "vcpus": 1, "memory_mib": 256}
    return [
        ("define the VM from its spec", "define_vm", build_body("define_vm", spec), "after"),
        (
            "start it (before_vm_start hooks run)",
            "start_vm",
            build_body("start_vm", ref, custom={"demo": "yes"}),
            "after",
        ),
        ("pause it", "pause_vm", build_body("pause_vm", ref), "after"),
        ("resume it", "resume_vm", build_body("resume_vm", ref), "after"),
        (
            "start it again: already running, a no-op",
            "start_vm",
            build_body("start_vm", ref),
            "after",
        ),
        (
            "shut it down (ACPI, destroy after 5 s if needed)",
            "shutdown_vm",
            build_body("shutdown_vm", ref, {"timeout": 5, "force": True}),
            "after",
        ),
        ("a message that is not JSON", "-", b"{this is not json", "fail"),
        ("an op this worker does not know", "-", build_body("migrate_to_mars", ref), "fail"),
        (
            "stop a VM that does not exist",
            "destroy_vm",
            build_body("destroy_vm", {"uuid": str(uuid.uuid4())}),
            "fail",
        ),
        (
            "start a VM the site's policy hook refuses (libvirt is never called)",
            "start_vm",
            build_body("start_vm", {**spec, "uuid": str(uuid.uuid4()), "name": "forbidden-1"}),
            "fail",
        ),
        ("undefine it", "undefine_vm", build_body("undefine_vm", ref), "after"),
    ]


def _hook_word(h: dict[str, Any]) -> str:
    edited = " (edited XML)" if h.get("changed_xml") else ""
    return f"{h['point']}/{h['name']} rc={h['rc']}{edited}"


def _describe(ev: dict[str, Any]) -> str:
    d = ev.get("data", {})
    phase = d.get("phase", "?")
    color = {"before": "cyan", "after": "green", "fail": "red"}.get(phase, "white")
    parts = [f"[{color}]{phase:<6}[/]", f"{d.get('op', '?'):<12}", ev.get("type", "")]
    if phase != "before":
        parts.append(f"state={d.get('state')}")
        parts.append(f"{d.get('duration_ms', 0):.1f} ms")
        if d.get("noop"):
            parts.append("[yellow]no-op[/]")
    hooks = [h for h in d.get("hooks") or [] if h.get("name")]
    if hooks:
        parts.append("hooks: " + ", ".join(_hook_word(h) for h in hooks))
    err = d.get("error")
    if err:
        parts.append(f"[red]{err['source']}/{err['code']}: {err['message']}[/]")
        if err.get("stderr"):
            parts.append(f"\n      [red]{err['stderr'].strip()}[/]")
    return "  " + "  ".join(parts)


POLICY_HOOK = """#!/bin/sh
# a site policy, as a hook: no VM named forbidden-* may start on this host
if grep -q "<name>forbidden-" "$_hook_domxml"; then
    echo "policy: VMs named forbidden-* may not run here" >&2
    exit 2
fi
"""


def _hooks_root(state: Path) -> Path:
    """The repo's hook directories plus one policy hook, in a private copy."""
    root = state / "hooks"
    shutil.copytree(REPO_HOOKDIRS, root)
    policy = root / "before_vm_start" / "10_policy"
    policy.write_text(POLICY_HOOK)
    policy.chmod(0o755)
    for d in (root, *root.iterdir()):
        d.chmod(0o755)
    return root


def _channels(uri: str, vm_uuid: str) -> list[str]:
    xml = libvirt.open(uri).lookupByUUIDString(vm_uuid).XMLDesc(0)
    tree = etree.fromstring(xml.encode())
    return [str(t.get("name")) for t in tree.iterfind("devices/channel/target")]


def _fleet_store(state: Path, seen: list[dict[str, Any]], console: Console) -> str:
    """Fold every event the demo saw into a fleet store (SQLite, in the demo's state dir) the
    way `vmworker fleet serve` does, and show what it answers; returns the store's URL."""
    from worker.fleet.fold import apply_batch
    from worker.fleet.queries import fleet_summary, list_requests
    from worker.fleet.store import open_store

    url = f"sqlite:///{state / 'fleet.db'}"
    engine = open_store(url)
    with engine.begin() as db:
        apply_batch(db, seen)
    with engine.connect() as db:
        summary = fleet_summary(db)
        requests = list_requests(db, limit=100)["items"]
    engine.dispose()
    failed = sum(1 for r in requests if r.get("result") == "failed")
    console.print(
        f"fleet store ({url}): {len(seen)} events, {len(requests)} requests "
        f"({failed} failed), {summary['vms_total']} VM(s)"
    )
    return url


def run_demo(pause: float = 0.0, serve: bool = False) -> int:
    """Run the scripted session; 0 if every step ended as expected. `serve`: then serve the
    demo's fleet store (web UI and API on 127.0.0.1:8470) until interrupted."""
    logs.configure("error")
    console = Console(highlight=False)
    state = Path(tempfile.mkdtemp(prefix="vmworker-demo-"))
    settings = Settings(
        host=HOST,
        broker="memory://",
        libvirt_uri="test:///default",
        state_dir=state,
        hooks_root=_hooks_root(state),
        hook_timeout=10,
    )
    from worker.service import Service

    svc = Service(settings, transport_options=MEMORY_OPTS)
    thread = threading.Thread(target=svc.run, name="worker", daemon=True)
    console.print(
        "[bold]vmworker demo[/]: one worker, kombu's in-memory broker, libvirt's "
        "test:///default driver, hooks from hookdirs/ plus a site policy hook\n"
    )
    thread.start()
    if not svc.ready.wait(15):
        console.print("[red]the worker did not start[/]")
        return 1
    topo = Topology.from_settings(settings)
    failures = 0
    vm_uuid = str(uuid.uuid4())
    with Connection("memory://", transport_options=MEMORY_OPTS) as conn:
        topo.declare_shared(conn)
        tap = live_queue(topo, HOST)
        tap.bind(conn.default_channel).declare()
        stream: Iterator[dict[str, Any]] = read_events(conn, topo, queue=tap, idle_timeout=20)
        seen: list[dict[str, Any]] = []  # every event, for the fleet store at the end
        for n, (title, op, body, expected) in enumerate(_steps(vm_uuid), 1):
            rid = publish_op(conn, topo, body)
            console.print(f"[bold]{n}. {title}[/]  [dim]{op} request {rid[:8]}[/]")
            got = None
            for ev in stream:
                seen.append(ev)
                if ev.get("requestid") != rid:
                    continue
                console.print(_describe(ev))
                if ev["data"]["phase"] in ("after", "fail"):
                    got = ev["data"]["phase"]
                    break
            if got != expected:
                failures += 1
                console.print(f"  [red]expected a {expected} event, got {got}[/]")
            elif op == "start_vm" and n == 2:
                names = ", ".join(_channels(settings.libvirt_uri, vm_uuid))
                console.print(f"  [dim]live domain channels, after the hooks: {names}[/]")
            time.sleep(pause)
        dead = topo.dead_queue.bind(conn.default_channel).queue_declare(passive=True)
    svc.stop()
    thread.join(30)
    s = svc.stats
    console.print(
        f"\n{s.received} messages, {s.ran} operations run, {s.published} events published, "
        f"{dead.message_count} dead-lettered to {topo.dead_queue.name}"
    )
    url = _fleet_store(state, seen, console)
    console.print("[green]demo OK[/]" if not failures else f"[red]{failures} step(s) failed[/]")
    if serve and not failures:
        from worker.cli import main as cli

        console.print("the fleet server on the demo's store: http://127.0.0.1:8470/ (Ctrl-C ends)")
        cli.main(["fleet", "serve", "--no-ingest", "--database-url", url], standalone_mode=False)
    else:
        console.print(f"[dim]browse it: vmworker fleet serve --no-ingest --database-url {url}[/]")
    return 1 if failures else 0
