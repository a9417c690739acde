"""The benchmark harness keeps working: a smoke pass with tiny counts writes every section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

SECTIONS = (
    "broker_ceiling",
    "celery",
    "vmworker",
    "vmworker_split",
    "ratios",
    "hooks",
    "qemu",
    "scale",
)


@pytest.mark.qemu
@pytest.mark.timeout(180)
def test_bench_smoke_pass_writes_json_and_markdown_with_every_section(
    broker: None, qemu: str, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (js,) = out.glob("*-smoke.json")
    (md,) = out.glob("*-smoke.md")
    res = json.loads(js.read_text())
    assert res["smoke"] is True
    for name in SECTIONS:
        sec = res["sections"].get(name)
        assert sec, f"section {name} missing"
        assert "error" not in sec, sec
    try:
        import celery  # noqa: F401
    except ImportError:
        assert "skipped" in res["sections"]["celery"]
        assert "SKIPPING the Celery baseline" in proc.stderr
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
    assert {t["target"] for t in res["targets"]} and all(
        t["value"] is not None for t in res["targets"] if "celery" not in t["path"][-1]
    )
    text = md.read_text()
    for heading in ("Throughput and latency", "Hooks", "Real QEMU", "Scale"):
        assert heading in text
    assert "| target |" in text


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
