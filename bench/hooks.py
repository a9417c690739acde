"""Hook costs: a shell script, a VDSM-style Python script (pre-warmed and exec'd), an in-process
hook; alone and in chains of 10, through `HookEngine.run_chain` directly and through the worker
(the latency an operation gains with a chain of 10 on `before_vm_start`)."""

from __future__ import annotations

import importlib.metadata
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import hooks_root, say, write_hook
from worker.hooks import HookEngine

POINT = "before_vm_start"
DOMXML = (
    "<domain type='kvm'><name>web-1</name><uuid>6f1c2d3e-0000-4000-8000-000000000001</uuid>"
    "<memory unit='MiB'>128</memory><vcpu>1</vcpu><os><type>hvm</type></os><devices/></domain>"
)

SHELL = """#!/bin/sh
# reads the domain XML, changes nothing
grep -q '<domain' "$_hook_domxml" || exit 1
exit 0
"""

VDSM_PY = """#!/usr/bin/python3
# a VDSM-style hook: read the domain XML with hooking, add an element, write it back
import os

import hooking

domxml = hooking.read_domxml()
domain = domxml.getElementsByTagName("domain")[0]
desc = domxml.createElement("description")
desc.appendChild(domxml.createTextNode("hook " + os.path.basename(__file__)))
old = domain.getElementsByTagName("description")
if old:
    domain.removeChild(old[0])
domain.appendChild(desc)
hooking.write_domxml(domxml)
"""

INPROC_MODULE = "vmworker_bench_hooks"
INPROC_SRC = '''"""In-process hooks for the benchmark: add a description, as the script does."""


def describe(tree, ctx):
    root = tree.getroot()
    desc = root.find("description")
    if desc is None:
        desc = root.makeelement("description", {})
        root.append(desc)
    desc.text = "inproc " + ctx.point
'''

KINDS = ("shell", "python_exec", "python_prewarm", "inproc")


def make_root(base: Path, kind: str, count: int) -> tuple[Path, Path | None]:
    """A hooks root with `count` hooks of `kind` on before_vm_start; for in-process hooks, also
    a directory to put on sys.path (a distribution declaring them as entry points)."""
    base.mkdir(parents=True, exist_ok=True)
    root = hooks_root(base)
    if kind == "inproc":
        site = base / "site"
        site.mkdir(exist_ok=True)
        (site / f"{INPROC_MODULE}.py").write_text(INPROC_SRC)
        dist = site / f"{INPROC_MODULE}-1.0.dist-info"
        dist.mkdir(exist_ok=True)
        (dist / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {INPROC_MODULE}\nVersion: 1.0\n"
        )
        eps = "".join(f"{POINT}:{i:02d}_inproc = {INPROC_MODULE}:describe\n" for i in range(count))
        (dist / "entry_points.txt").write_text(f"[vmworker.hooks]\n{eps}")
        return root, site
    text = SHELL if kind == "shell" else VDSM_PY
    for i in range(count):
        write_hook(root, POINT, f"{i:02d}_{kind}", text)
    return root, None


@contextmanager
def on_path(site: Path | None) -> Iterator[None]:
    if site is None:
        yield
        return
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(site))
        sys.modules.pop(INPROC_MODULE, None)


def chain_time(base: Path, kind: str, count: int, reps: int) -> float:
    """Median seconds of one `run_chain` over `count` hooks of `kind`."""
    root, site = make_root(base / f"{kind}-{count}", kind, count)
    with on_path(site):
        engine = HookEngine(
            root,
            timeout=30.0,
            inproc=kind == "inproc",
            prewarm=kind == "python_prewarm",
        )
        try:
            res = engine.run_chain(POINT, DOMXML, vm_id="u-1")  # warm-up (starts the server)
            if res.failed or len(res.scripts) != count:
                raise RuntimeError(f"{kind} chain failed: {res.failure_stderr()}")
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                res = engine.run_chain(POINT, DOMXML, vm_id="u-1")
                times.append(time.perf_counter() - t0)
                if res.failed:
                    raise RuntimeError(f"{kind} chain failed: {res.failure_stderr()}")
        finally:
            engine.close()
    return statistics.median(times)


def direct_once(base: Path, reps: int) -> dict[str, Any]:
    """Per hook kind: one hook, a chain of 10, and the cost per hook in the chain of 10."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        one = chain_time(base, kind, 1, reps)
        ten = chain_time(base, kind, 10, max(2, reps // 3))
        out[kind] = {"one_ms": one * 1e3, "chain10_ms": ten * 1e3, "per_hook_ms": ten * 100}
        say(f"hooks: {kind}: one {one * 1e3:.3f} ms, chain of 10 {ten * 1e3:.2f} ms")
    return out


def worker_added_once(base: Path, m: int) -> dict[str, Any]:
    """Median closed-loop latency of start_vm with no hooks and with a chain of 10 of each kind;
    the added time per operation is the difference (same run)."""
    from bench import vmworker_ops

    lat: dict[str, float] = {}
    kw: dict[str, Any] = {}
    for kind in ("none", *KINDS):
        kw = {}
        if kind != "none":
            root, site = make_root(base / f"worker-{kind}", kind, 10)
            kw["hooks_root"] = root
            if kind == "python_exec":
                kw["hook_prewarm"] = False
            if site is not None:
                kw["pythonpath"] = [str(site)]
        samples = vmworker_ops.latency_once(base, m, **kw)
        lat[kind] = statistics.median(samples) * 1e3
    out = {kind: {"latency_ms": lat[kind], "added_ms": lat[kind] - lat["none"]} for kind in KINDS}
    out["none"] = {"latency_ms": lat["none"], "added_ms": 0.0}
    say(
        "hooks through the worker: "
        + ", ".join(f"{k} +{v['added_ms']:.1f} ms" for k, v in out.items())
    )
    return out
