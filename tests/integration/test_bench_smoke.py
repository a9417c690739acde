"""The benchmark harness keeps working: a smoke pass with tiny counts writes every section."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, broker_conn, wait_for, wait_until

SECTIONS = (
    "broker_ceiling",
    "celery",
    "vmworker",
    "vmworker_split",
    "ratios",
    "hooks",
    "qemu",
    "scale",
    "fleet",
)


def _smoke(tmp_path: Path, *args: str, timeout: float) -> tuple[dict[str, Any], str, str]:
    """`python -m bench.run --smoke` with `args`: its results (the JSON), its Markdown, its
    stderr."""
    out = tmp_path / "results"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.run", "--smoke", *args, "--out", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:  # what it was doing: the end of what it said
        said = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        pytest.fail(f"the smoke pass took over {timeout:g}s; it said:\n{said[-4000:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    (js,) = out.glob("*-smoke.json")
    (md,) = out.glob("*-smoke.md")
    return json.loads(js.read_text()), md.read_text(), proc.stderr


@pytest.mark.qemu
@pytest.mark.timeout(480)
def test_bench_smoke_pass_writes_json_and_markdown_with_every_section(
    broker: None, qemu: str, tmp_path: Path
) -> None:
    # ~30 s on a quiet machine; once over 170 s on a slow one
    res, text, stderr = _smoke(tmp_path, timeout=450)
    assert res["smoke"] is True
    for name in SECTIONS:
        sec = res["sections"].get(name)
        assert sec, f"section {name} missing"
        assert "error" not in sec, sec
    try:
        import celery  # noqa: F401
    except ImportError:
        assert "skipped" in res["sections"]["celery"]
        assert "SKIPPING the Celery baseline" in stderr
    else:
        assert res["sections"]["celery"]["ops_s"]["median"] > 0
        assert res["sections"]["ratios"]["vmworker_vs_celery"]["median"] > 0
    s = res["sections"]
    assert s["broker_ceiling"]["ops_s"]["median"] > 0
    assert s["vmworker"]["ops_s"]["median"] > 0
    assert s["vmworker"]["lat_p99_ms"]["median"] >= s["vmworker"]["lat_p50_ms"]["median"] > 0
    assert s["vmworker_split"]["processes"]["median"] >= 2
    assert s["vmworker_split"]["ops_s"]["median"] > 0
    assert s["ratios"]["split_vs_vmworker"]["median"] > 0
    for kind in ("shell", "python_exec", "python_prewarm", "inproc"):
        assert s["hooks"]["direct"][kind]["per_hook_ms"]["median"] > 0
        assert kind in s["hooks"]["worker"]
    assert s["qemu"]["ratio"]["median"] > 0
    assert s["scale"]["vms"]["rss_loaded_mib"]["median"] > 0
    assert s["scale"]["concurrent"]["ratio"]["median"] > 0
    for kind in ("sqlite", "postgresql"):  # the fleet store on both backends
        assert s["fleet"][kind]["ingest"]["catchup_msgs_s"]["median"] > 0
        assert s["fleet"][kind]["ingest"]["live_lag_max_s"]["median"] >= 0
        assert s["fleet"][kind]["big"]["request_history_ms"]["median"] > 0
        assert s["fleet"][kind]["big"]["fleet_summary_ms"]["median"] > 0
    # every target of the parts it ran has a value (a plain smoke pass leaves migration out)
    assert {t["target"] for t in res["targets"]} and all(
        t["value"] is not None
        for t in res["targets"]
        if "celery" not in t["path"][-1] and t["path"][0] != "migration"
    )
    assert "migration" not in s
    for heading in ("Throughput and latency", "Hooks", "Real QEMU", "Scale", "Fleet store"):
        assert heading in text
    assert "| target |" in text


@pytest.mark.qemu
@pytest.mark.timeout(150)
def test_bench_migration_smoke_pass_measures_worker_direct_downtime_and_drain(
    broker: None, qemu: str, tmp_path: Path
) -> None:
    res, text, _ = _smoke(tmp_path, "--only", "migration", timeout=140)
    m = res["sections"]["migration"]
    assert "error" not in m and "skipped" not in m, m
    assert m["worker_ms"]["median"] > 0 and m["direct_ms"]["median"] > 0
    assert m["ratio"]["median"] > 0
    assert m["worker_downtime_ms"]["median"] > 0 and m["direct_downtime_ms"]["median"] > 0
    assert m["drain_p2_wall_s"]["median"] > 0
    assert "live migration: worker ÷ libvirt direct" in text
    assert "vmworker drain of 2 VMs, --parallel 2" in text


@pytest.mark.timeout(120)
def test_latency_breakdown_prints_every_stage(broker: None) -> None:
    from bench.breakdown import STAGES

    proc = subprocess.run(
        [sys.executable, "-m", "bench.breakdown", "5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {line.split(":")[0].strip("| ") for line in proc.stdout.splitlines()}
    assert {key for key, _ in STAGES} <= rows, proc.stdout
    total = next(line for line in proc.stdout.splitlines() if line.startswith("| total:"))
    assert all(float(cell) > 0 for cell in total.split("|")[2:5]), total


def _bench_names(kind: str) -> set[str]:
    """The broker's queues or exchanges (`kind`) a benchmark made (names `bench<hex>...`)."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", f"list_{kind}", "name"], capture_output=True, text=True, timeout=60
    ).stdout
    return {line.strip() for line in out.splitlines() if line.startswith("bench")}


# every process of the run under test inherits this variable: nothing else on the machine (another
# benchmark, a developer's worker) is counted or killed
RUN_TAG = f"BENCH_TEST_RUN={uuid.uuid4().hex}"


def _bench_processes() -> dict[int, str]:
    """The processes the benchmark under test started (workers, bare loops, Celery): pid ->
    command line."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if RUN_TAG.encode() not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = " ".join(a.decode(errors="replace") for a in argv if a)
        if " -m worker run" in line or "bench.broker_ceiling" in line or "bench.celery_app" in line:
            found[int(proc.name)] = line
    return found


BENCH_CORE = [sys.executable, "-m", "bench.run", "--smoke", "--only", "core", "--no-doc"]


@pytest.mark.timeout(150)
def test_a_terminated_bench_run_stops_its_processes_and_deletes_its_queues(
    broker: None, tmp_path: Path
) -> None:
    before = {kind: _bench_names(kind) for kind in ("queues", "exchanges")}
    key, _, value = RUN_TAG.partition("=")
    proc = subprocess.Popen(
        [*BENCH_CORE, "--out", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, key: value},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # the ceiling is measured: the next contenders follow
            seen.append(line)
            if "broker ceiling:" in line:
                break
        else:
            raise AssertionError("".join(seen[-20:]))
        # until one of them (Celery's or a worker) is running
        wait_for(_bench_processes, 30, "a benchmark process to stop", interval=0.02)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=90)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # what the run left behind, noted for the asserts below, then removed; a process
        # killed on the way out may take a moment to be gone
        wait_until(lambda: not _bench_processes(), 10, interval=0.1)
        queues = _bench_names("queues") - before["queues"]
        exchanges = _bench_names("exchanges") - before["exchanges"]
        procs = _bench_processes()
        for pid in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with broker_conn() as conn:
            for name in queues:
                with contextlib.suppress(Exception), conn.channel() as ch:
                    ch.queue_delete(name)
            for name in exchanges:
                with contextlib.suppress(Exception), conn.channel() as ch:
                    ch.exchange_delete(name)
    assert proc.returncode == 128 + signal.SIGTERM, rest[-3000:]
    assert (queues, exchanges, procs) == (set(), set(), {})
