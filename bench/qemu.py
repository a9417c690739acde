"""Real QEMU: `start_vm` through the worker against libvirt called directly (define + create
of the same domain XML) on qemu:///system, with the smallest domain a QEMU boots
(tests/support.small_vm()). The two are interleaved so that drift hits both alike; every
domain is destroyed and undefined (untimed) before the next start."""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import EventTap, OpPublisher, say, topology, unique
from bench.vmworker_ops import start_worker

URI = "qemu:///system"


def available() -> str | None:
    try:
        import libvirt

        libvirt.open(URI).close()
    except Exception as exc:
        return f"no libvirtd on {URI} ({exc}); scripts/bootstrap libvirtd starts one"
    return None


def _spec() -> dict[str, Any]:
    from tests.support import small_vm

    spec = small_vm("bench")
    spec["name"] = unique("vmw-bench-")
    return spec


def _remove(conn: Any, uuid: str) -> None:
    import libvirt

    import handlers.connection  # noqa: F401  (libvirt prints no "domain not found" here)

    with contextlib.suppress(libvirt.libvirtError):
        dom = conn.lookupByUUIDString(uuid)
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


def run_once(tmp: Path, m: int) -> dict[str, Any]:
    """m starts through the worker and m direct starts, alternating."""
    import json

    import libvirt

    from handlers.domxml import build_domain_xml
    from handlers.spec import VmSpec

    conn = libvirt.open(URI)
    prefix, host = unique("bench"), unique("h")
    worker_s: list[float] = []
    direct_s: list[float] = []
    made: list[str] = []
    try:
        with topology(prefix, host) as topo:
            tap = EventTap(topo.events).start()
            worker = start_worker(tmp, prefix, host, libvirt_uri=URI)
            pub = None
            try:
                worker.start()
                pub = OpPublisher(topo.ops, host)
                for _ in range(m):
                    spec = _spec()
                    made.append(spec["uuid"])
                    body = json.dumps({"version": 1, "op": "start_vm", "vm": spec}).encode()
                    t0 = time.monotonic()
                    s = tap.wait_terminal(pub.publish(body), timeout=120)
                    if s.phase != "after":
                        raise RuntimeError(f"start_vm failed on {URI}: {s.error}")
                    worker_s.append(s.at - t0)
                    _remove(conn, spec["uuid"])

                    spec = _spec()
                    made.append(spec["uuid"])
                    xml = build_domain_xml(VmSpec.model_validate(spec))
                    t0 = time.monotonic()
                    conn.defineXML(xml)
                    conn.createXML(xml, 0)
                    direct_s.append(time.monotonic() - t0)
                    _remove(conn, spec["uuid"])
            finally:
                if pub is not None:
                    pub.close()
                worker.stop()
                tap.stop()
    finally:
        for u in made:
            _remove(conn, u)
        conn.close()
    w, d = statistics.median(worker_s), statistics.median(direct_s)
    say(f"qemu: worker {w * 1e3:.0f} ms, direct {d * 1e3:.0f} ms, ratio {w / d:.3f}")
    return {"worker_ms": w * 1e3, "direct_ms": d * 1e3, "ratio": w / d}
