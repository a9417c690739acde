"""Where one `start_vm` spends its time: `python -m bench.breakdown [N]`.

A worker runs in this process (test:///default, empty hook directories, journal on); N
operations are sent one at a time, as the latency benchmark does, and the worker's stages are
timed on the way by wrapping its parts' methods (`Admission.admit`, `Executor.__call__`,
`Journal.start`, `Runner.run`, `Journal.finish`, `Scheduler.collect`). Prints the mean time of
each stage for the median operations and for the slowest 10% and 3%.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from bench.common import EventTap, OpPublisher, in_process_settings, start_body, topology, unique
from worker.admission import Admission
from worker.execute import Executor
from worker.journal import Journal
from worker.runner import Runner
from worker.scheduler import Scheduler
from worker.service import Service

STAGES = (
    ("publish", "the operation published and confirmed (the control plane's side)"),
    ("to_receive", "until the worker's connection thread has it (< 0: before the confirm)"),
    ("receive", "validated and recorded as received"),
    ("to_pool", "until a pool thread takes it"),
    ("started", "the `started` record (and the `before` event) on disk"),
    ("runner", "hooks, libvirt, state"),
    ("finished", "the `finished` record (and the `after` event) on disk"),
    ("to_connection", "until the connection thread collects it"),
    ("events", "events published, confirmed, seen by the tap"),
    ("total", "publish to the `after` event"),
)


class Stamps:
    def __init__(self) -> None:
        self.at: dict[str, dict[str, float]] = {}

    def mark(self, rid: str | None, key: str) -> None:
        if rid:
            self.at.setdefault(rid, {})[key] = time.monotonic()

    def wrap(self, cls: Any, name: str, key: str, rid_of: Callable[..., str | None]) -> None:
        orig = getattr(cls, name)

        def timed(obj: Any, *a: Any, **kw: Any) -> Any:
            rid = rid_of(*a, **kw)
            self.mark(rid, f"{key}0")
            try:
                return orig(obj, *a, **kw)
            finally:
                self.mark(rid, f"{key}1")

        setattr(cls, name, timed)


def measure(n: int) -> list[dict[str, float]]:
    stamps = Stamps()
    stamps.wrap(Admission, "admit", "recv", lambda m, *a: m.properties.get("message_id"))
    stamps.wrap(Executor, "__call__", "exec", lambda job: job.request_id)
    stamps.wrap(Journal, "start", "jstart", lambda rid, *a, **k: rid)
    stamps.wrap(Journal, "finish", "jfin", lambda rid, *a, **k: rid)
    stamps.wrap(Runner, "run", "run", lambda op, request_id, **k: request_id)
    collect = Scheduler.collect

    def collected(sched: Scheduler[Any]) -> list[tuple[Any, Any]]:
        done = collect(sched)
        for job, _ in done:
            stamps.mark(job.request_id, "collect")
        return done

    Scheduler.collect = collected  # type: ignore[method-assign,assignment]
    rows: list[dict[str, float]] = []
    prefix, host = unique("brk"), unique("h")
    with tempfile.TemporaryDirectory() as tmp, topology(prefix, host) as topo:
        tap = EventTap(topo.events).start()
        svc = Service(in_process_settings(prefix, host, Path(tmp)), freeze_gc=True)
        thread = threading.Thread(target=svc.run, daemon=True)
        thread.start()
        svc.ready.wait(30)
        pub = OpPublisher(topo.ops, host)
        try:
            for i in range(n + 10):
                t0 = time.monotonic()
                rid = pub.publish(start_body())
                t1 = time.monotonic()
                seen = tap.wait_terminal(rid)
                x = stamps.at.pop(rid)
                # a flush between the `finished` record and the collect sends the event first
                x.setdefault("collect", seen.at)
                if i < 10:
                    continue  # warm-up
                rows.append(
                    {
                        "publish": t1 - t0,
                        "to_receive": x["recv0"] - t1,
                        "receive": x["recv1"] - x["recv0"],
                        "to_pool": x["exec0"] - x["recv1"],
                        "started": x["jstart1"] - x["jstart0"],
                        "runner": x["run1"] - x["run0"],
                        "finished": x["jfin1"] - x["jfin0"],
                        "to_connection": x["collect"] - x["jfin1"],
                        "events": seen.at - x["collect"],
                        "total": seen.at - t0,
                    }
                )
        finally:
            pub.close()
            svc.stop()
            thread.join(30)
            tap.stop()
    return rows


def report(rows: list[dict[str, float]]) -> str:
    by_total = sorted(rows, key=lambda r: r["total"])
    k = len(by_total)
    groups = {
        "median": by_total[max(0, k // 2 - k // 20) : k // 2 + k // 20 + 1],
        "slowest 10%": by_total[int(k * 0.9) :],
        "slowest 3%": by_total[int(k * 0.97) :],
    }
    out = ["| stage | " + " | ".join(groups) + " |", "| --- |" + " --- |" * len(groups)]
    for key, what in STAGES:
        cells = [f"{statistics.mean(r[key] for r in g) * 1e3:.2f}" for g in groups.values()]
        out.append(f"| {key}: {what} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n(ms, mean of each group)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__)
    ap.add_argument("n", type=int, nargs="?", default=300, help="operations (default 300)")
    args = ap.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(report(measure(args.n)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
