"""What a benchmark measures besides time: memory and CPU of processes, of the broker and of the
machine, read from /proc."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def children_rss_kib(pid: int) -> int:
    """Summed VmRSS of the direct children of a process (fork servers), KiB."""
    total = 0
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                total += rss_kib(int(child)).get("VmRSS", 0)
    return total


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants alive now, seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def _broker_pids() -> list[int]:
    """The Erlang VMs on this machine (the broker; nodes of other tests idle meanwhile)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "comm").read_text().strip() == "beam.smp":
                    pids.append(int(d.name))
    return pids


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class CpuMeter:
    """Where the machine's CPU goes while a consumer drains a queue: the consumer, the broker,
    this harness (publishers and the event tap), and how many cores were busy in all."""

    def __init__(self, *consumer_pids: int) -> None:
        self.pids = consumer_pids
        self.brokers = _broker_pids()
        self.t0 = time.monotonic()
        self.consumer0 = self._consumer()
        self.broker0 = sum(cpu_seconds(b) for b in self.brokers)
        self.harness0 = time.process_time()
        self.machine0 = _machine_ticks()

    def _consumer(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def stop(self, n: int) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        consumer = self._consumer() - self.consumer0
        busy1, total1 = _machine_ticks()
        busy0, total0 = self.machine0
        cpus = os.cpu_count() or 1
        return {
            "cpu_ms_per_op": consumer / n * 1e3,
            "broker_cpu_ms_per_op": (sum(cpu_seconds(b) for b in self.brokers) - self.broker0)
            / n
            * 1e3,
            "harness_cpu_ms_per_op": (time.process_time() - self.harness0) / n * 1e3,
            "machine_busy_cores": (busy1 - busy0) / max(1, total1 - total0) * cpus,
            "consumer_cores": consumer / wall if wall else 0.0,
        }
