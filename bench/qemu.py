"""Real QEMU: `start_vm` through the worker against libvirt called directly (define + create
of the same domain XML) on qemu:///system, with the smallest domain a QEMU boots
(tests/support.small_vm()). The two are interleaved so that drift hits both alike; every
domain is destroyed and undefined (untimed) before the next start."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import remove_domain, say, unique
from bench.vmworker_ops import worker_running

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


def run_once(tmp: Path, m: int) -> dict[str, Any]:
    """m starts through the worker and m direct starts, alternating."""
    import json

    import libvirt

    from handlers.domxml import build_domain_xml
    from handlers.spec import VmSpec

    conn = libvirt.open(URI)
    worker_s: list[float] = []
    direct_s: list[float] = []
    made: list[str] = []
    try:
        with worker_running(tmp, libvirt_uri=URI) as (_, tap, pub):
            for _ in range(m):
                spec = _spec()
                made.append(spec["uuid"])
                body = json.dumps({"version": 1, "op": "start_vm", "vm": spec}).encode()
                t0 = time.monotonic()
                s = tap.wait_terminal(pub.publish(body), timeout=120)
                if s.phase != "after":
                    raise RuntimeError(f"start_vm failed on {URI}: {s.error}")
                worker_s.append(s.at - t0)
                remove_domain(conn, spec["uuid"])

                spec = _spec()
                made.append(spec["uuid"])
                xml = build_domain_xml(VmSpec.model_validate(spec))
                t0 = time.monotonic()
                conn.defineXML(xml)
                conn.createXML(xml, 0)
                direct_s.append(time.monotonic() - t0)
                remove_domain(conn, spec["uuid"])
    finally:
        for u in made:
            remove_domain(conn, u)
        conn.close()
    w, d = statistics.median(worker_s), statistics.median(direct_s)
    say(f"qemu: worker {w * 1e3:.0f} ms, direct {d * 1e3:.0f} ms, ratio {w / d:.3f}")
    return {"worker_ms": w * 1e3, "direct_ms": d * 1e3, "ratio": w / d}
