"""What tracing costs: CPU time per `start_vm` with tracing off, on, and (optionally) with the
code of another checkout, interleaved: `python -m bench.tracing [--ops N] [--runs R]
[--baseline DIR]`.

Each measurement is a fresh process: N+W `start_vm` messages, each with a `traceparent` and a
`tracestate` header, are put in a host queue first; then a worker starts in that process
(test:///default, empty hook directories, journal on), and the process's CPU time is read once
the first W are done and again once all are: (CPU after - CPU before) / N. The publisher has
finished by then; what runs is the worker and an event tap (the same in every mode).

Modes: `off` (the default settings), `on` (an SDK provider with a batch processor and the
in-memory exporter: every span is made, processed and kept), `base` (`--baseline DIR`: the
worker of another checkout, e.g. `git worktree add /tmp/base <commit>`, with the default
settings). Runs alternate the modes, so load from elsewhere on the machine falls on each alike.
Prints the median and range of each mode's CPU ms/op. docs/performance.md has figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _child(mode: str, n: int, warm: int) -> float:
    """One measurement in this process: CPU seconds per operation."""
    import structlog

    from bench.common import (
        EventTap,
        OpPublisher,
        check_ok,
        in_process_settings,
        start_body,
        topology,
        unique,
        wait_depth,
    )
    from worker.service import Service

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    kw: dict[str, Any] = {}
    if mode == "on":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
        kw["tracer_provider"] = provider
    prefix, host = unique("benchtr"), unique("h")
    with tempfile.TemporaryDirectory() as tmp, topology(prefix, host) as topo:
        pub = OpPublisher(topo.ops, host)
        rids = []
        try:
            for _ in range(n + warm):
                rid = str(secrets.token_hex(16))
                pub.producer.publish(
                    start_body(),
                    exchange=topo.ops,
                    routing_key=host,
                    content_type="application/json",
                    delivery_mode=2,
                    message_id=rid,
                    headers={
                        "traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
                        "tracestate": "ctl=1",
                    },
                    retry=False,
                )
                rids.append(rid)
        finally:
            pub.close()
        wait_depth(topo.host_queue.name, n + warm)
        tap = EventTap(topo.events).start()
        svc = Service(in_process_settings(prefix, host, Path(tmp)), freeze_gc=True, **kw)
        thread = threading.Thread(target=svc.run, daemon=True)
        thread.start()
        try:
            check_ok(tap.wait_all(rids[:warm]))
            c0 = time.process_time()
            check_ok(tap.wait_all(rids[warm:]))
            c1 = time.process_time()
        finally:
            svc.stop()
            thread.join(60)
            tap.stop()
    return (c1 - c0) / n


def micro(n: int = 20000, modes: tuple[str, ...] = ("off", "on")) -> dict[str, float]:
    """Microseconds of CPU per request spent in worker/tracing.py itself, off and on, for what
    one `start_vm` with no hooks does: its trace made from the message's headers, made the
    thread's, three libvirt steps asking for it, two events taking their headers (on: with a
    publish span each), its span ended."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from worker import tracing

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))  # kept, each
    headers = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01", "tracestate": "ctl=1"}
    out = {}
    for mode, t in (("off", tracing.Tracing("h")), ("on", tracing.Tracing("h", provider))):
        if mode not in modes:
            continue
        c0 = time.process_time()
        for i in range(n):
            tr = t.receive(
                headers,
                op="start_vm",
                request_id=str(i),
                correlation_id=None,
                vm_uuid="u",
                destination="vm.ops",
            )
            tracing.enter(tr)
            for step in ("connect", "done", "start_vm"):
                if (active := tracing.active()) is not None:
                    span = active.child(f"libvirt {step}")
                    assert span is not None
                    span.end()
            for _ in range(2):
                span = tr.publish_span("vm.events", "h.start_vm.after")
                tr.event_headers(span)
                if span is not None:
                    span.end()
            tracing.leave(tr)
            if tr.span is not None:
                tr.span.end()
        out[mode] = (time.process_time() - c0) / n * 1e6
    provider.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=300, help="measured operations per run")
    ap.add_argument("--warm", type=int, default=30, help="operations before measuring")
    ap.add_argument("--runs", type=int, default=5, help="runs of each mode, interleaved")
    ap.add_argument("--baseline", type=Path, help="another checkout: also measure its worker")
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions (valgrind callgrind) instead of CPU time: steady on a busy"
        " machine, about 50 times slower",
    )
    ap.add_argument("--child", choices=["off", "on", "base"], help=argparse.SUPPRESS)
    ap.add_argument("--modes", default="off,on,base", help="which modes, comma-separated")
    ap.add_argument(
        "--micro",
        type=int,
        nargs="?",
        const=20000,
        metavar="N",
        help="only the tracing code, N requests (default 20000), no worker",
    )
    args = ap.parse_args(argv)
    if args.micro:
        for mode, us in micro(args.micro, tuple(args.modes.split(","))).items():
            print(f"{mode:>4}: {us:.2f} us CPU per request in worker/tracing.py")
        return 0
    if args.child:
        import worker

        per_op = _child(args.child, args.ops, args.warm)
        print(json.dumps({"cpu_s_per_op": per_op, "worker": str(Path(worker.__file__).parent)}))
        return 0
    from bench.common import exit_on_sigterm

    exit_on_sigterm()
    modes = [m for m in args.modes.split(",") if m != "base" or args.baseline]
    got: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as mixed:
        # the baseline's worker and handlers packages, with this tree's benchmark code
        for pkg, tree in (("worker", args.baseline), ("handlers", args.baseline), ("bench", REPO)):
            if tree is not None:
                os.symlink(Path(tree).resolve() / pkg, Path(mixed) / pkg)
        return _runs(args, modes, got, Path(mixed))


def _runs(
    args: argparse.Namespace, modes: list[str], got: dict[str, list[float]], mixed: Path
) -> int:
    unit = "M instructions" if args.instructions else "ms CPU"
    for run in range(args.runs):
        for mode in modes if run % 2 == 0 else modes[::-1]:
            tree = mixed if mode == "base" else REPO
            res = _measure(args, mode, tree, args.ops)
            if args.instructions:  # the same with twice the operations: the difference is theirs
                res2 = _measure(args, mode, tree, 2 * args.ops)
                value = (res2["instructions"] - res["instructions"]) / args.ops / 1e6
            else:
                value = res["cpu_s_per_op"] * 1000
            got[mode].append(value)
            print(f"run {run + 1} {mode:>4}: {value:.3f} {unit}/op ({res['worker']})", flush=True)
    print(f"\n{args.ops} start_vm per run, {args.runs} runs per mode ({unit} per operation)")
    for mode, vals in got.items():
        print(
            f"{mode:>4}: median {statistics.median(vals):.3f}"
            f"  range {min(vals):.3f}-{max(vals):.3f}"
        )
    return 0


def _measure(args: argparse.Namespace, mode: str, tree: Path, ops: int) -> dict[str, Any]:
    """One child process's result; with --instructions, run under callgrind (the whole
    process's instruction count, every thread)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode]
    cmd += ["--ops", str(ops), "--warm", str(args.warm)]
    if args.instructions:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={os.devnull}", *cmd]
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} run failed: {out.stderr[-3000:]}")
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if args.instructions:
        found = re.search(r"Collected : (\d+)", out.stderr)
        if found is None:
            raise RuntimeError(f"no instruction count from callgrind: {out.stderr[-1000:]}")
        res["instructions"] = int(found[1])
    return res


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a file (the children): the tree's root, not bench/
        sys.path[0] = os.environ.get("PYTHONPATH") or str(REPO)
    raise SystemExit(main())
