"""Run every benchmark, side by side, in one go: `python -m bench.run [--smoke] [--out DIR]`.

Writes `<out>/<date>.json`, `<out>/<date>.md` and `<out>/<date>-*.png` (`-smoke` in the names
of a smoke pass). Each figure is the median of `--runs` runs, with min and max; every
comparison is a ratio of two figures measured in the same run (the core three are interleaved
run by run), because absolute times on a shared machine are not comparable between runs.
A full run into the default directory also refreshes the results block of
docs/performance.md. A smoke pass leaves the migration part out unless asked for with `--only
migration` (it starts two libvirtds and migrates real VMs: about 40 s on its own).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from bench import (
    broker_ceiling,
    celery_baseline,
    fleet,
    hooks,
    migration,
    qemu,
    scale,
    vmworker_ops,
)
from bench.common import REPO, exit_on_sigterm, now_iso, say, skipping, summary
from bench.meter import loadavg

DEFAULT_OUT = REPO / "bench" / "results"
DOC = REPO / "docs" / "performance.md"
DOC_BEGIN, DOC_END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"


def params(smoke: bool, runs: int | None) -> dict[str, int]:
    if smoke:
        p = dict(runs=1, ops=30, lat=10, hook_reps=3, hook_lat=3, qemu=1, vms=50, concurrent=16)
        p.update(mig_rounds=1, drain_vms=2)
    else:
        p = dict(
            runs=5, ops=2000, lat=300, hook_reps=30, hook_lat=30, qemu=6, vms=1000, concurrent=100
        )
        p.update(mig_rounds=3, drain_vms=10)
    if runs:
        p["runs"] = runs
    return p


def _runs(key: str, per_run: list[dict[str, Any]]) -> dict[str, Any]:
    return summary(r[key] for r in per_run)


def _fields(per_run: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: _runs(k, per_run) for k in per_run[0]} if per_run else {}


# the two throughput targets: vmworker at least 1.5x Celery's ops/s and 70% of the ceiling's
VS_CELERY = 1.5
VS_CEILING = 0.70


# what several worker processes per machine would give, one per core, at least two
SPLIT_PROCESSES = max(2, os.cpu_count() or 1)


# -- the sections --------------------------------------------------------------------------------
def core(tmp: Path, p: dict[str, int], res: dict[str, Any]) -> None:
    """Ceiling, Celery and vmworker, interleaved run by run; ratios within each run."""
    celery_skip = celery_baseline.available()
    if skipping(res["smoke"], celery_skip, "Celery", "the Celery baseline"):
        res["sections"]["celery"] = {"skipped": celery_skip}
    ceil_runs, cel_runs, vmw_runs, split_runs, ratios = [], [], [], [], []
    for i in range(p["runs"]):
        say(f"core run {i + 1}/{p['runs']} (load {loadavg()[0]:.2f})")
        c = broker_ceiling.run_once(tmp, p["ops"], p["lat"])
        cel = None if celery_skip else celery_baseline.run_once(tmp, p["ops"], p["lat"])
        v = vmworker_ops.run_once(tmp, p["ops"], p["lat"])
        sp = vmworker_ops.split_once(tmp, p["ops"], SPLIT_PROCESSES)
        ceil_runs.append(c)
        vmw_runs.append(v)
        split_runs.append(sp)
        r = {
            "vmworker_vs_ceiling": v["ops_s"] / c["ops_s"],
            "split_vs_ceiling": sp["ops_s"] / c["ops_s"],
            "split_vs_vmworker": sp["ops_s"] / v["ops_s"],
            "p99_vs_bare_rtt_p50": v["lat_p99_ms"] / c["rtt_p50_ms"],
            "p99_vs_bare_rtt_p99": v["lat_p99_ms"] / c["rtt_p99_ms"],
            "p50_vs_bare_rtt_p50": v["lat_p50_ms"] / c["rtt_p50_ms"],
        }
        # the machine's budget: its cores over the CPU one operation costs everywhere (the
        # consumer, the broker, the harness), and the consumer's share a target leaves
        cores_ms = (os.cpu_count() or 1) * 1e3
        others = v.get("broker_cpu_ms_per_op", 0.0) + v.get("harness_cpu_ms_per_op", 0.0)
        if "cpu_ms_per_op" in v:
            r["machine_ops_s_at_vmworker_cpu"] = cores_ms / (v["cpu_ms_per_op"] + others)
        r["cpu_allowed_for_ceiling_target"] = cores_ms / (VS_CEILING * c["ops_s"]) - others
        if cel is not None:
            cel_runs.append(cel)
            r["vmworker_vs_celery"] = v["ops_s"] / cel["ops_s"]
            r["split_vs_celery"] = sp["ops_s"] / cel["ops_s"]
            r["celery_vs_ceiling"] = cel["ops_s"] / c["ops_s"]
            r["cpu_allowed_for_celery_target"] = cores_ms / (VS_CELERY * cel["ops_s"]) - others
        ratios.append(r)
    res["sections"]["broker_ceiling"] = _fields(ceil_runs)
    if cel_runs:
        res["sections"]["celery"] = _fields(cel_runs)
    res["sections"]["vmworker"] = _fields(vmw_runs)
    res["sections"]["vmworker_split"] = _fields(split_runs)
    res["sections"]["ratios"] = _fields(ratios)


def hooks_section(tmp: Path, p: dict[str, int], res: dict[str, Any]) -> None:
    direct, through = [], []
    for i in range(p["runs"]):
        say(f"hooks run {i + 1}/{p['runs']}")
        base = Path(tempfile.mkdtemp(dir=tmp, prefix="hooks-"))
        direct.append(hooks.direct_once(base, p["hook_reps"]))
        through.append(hooks.worker_added_once(base, p["hook_lat"]))
    res["sections"]["hooks"] = {
        "direct": {kind: _fields([d[kind] for d in direct]) for kind in hooks.KINDS},
        "worker": {kind: _fields([t[kind] for t in through]) for kind in ("none", *hooks.KINDS)},
    }


def qemu_section(tmp: Path, p: dict[str, int], res: dict[str, Any]) -> None:
    why = qemu.available()
    if skipping(res["smoke"], why, "qemu:///system", "real QEMU"):
        res["sections"]["qemu"] = {"skipped": why}
        return
    runs = []
    for i in range(p["runs"]):
        say(f"qemu run {i + 1}/{p['runs']}")
        runs.append(qemu.run_once(tmp, p["qemu"]))
    res["sections"]["qemu"] = _fields(runs)


def scale_section(tmp: Path, p: dict[str, int], res: dict[str, Any]) -> None:
    vms, conc = [], []
    for i in range(p["runs"]):
        say(f"scale run {i + 1}/{p['runs']}")
        vms.append(scale.vms_once(tmp, p["vms"], idle_s=0.5 if res["smoke"] else 2.0))
        conc.append(scale.concurrent_once(tmp, p["concurrent"]))
    res["sections"]["scale"] = {"vms": _fields(vms), "concurrent": _fields(conc)}


def fleet_section(tmp: Path, p: dict[str, int], res: dict[str, Any]) -> None:
    """The fleet store: ingest rate and lag, queries on a big store (bench/fleet.py)."""
    fleet.section(tmp, res["smoke"], res)


# -- targets -----------------------------------------------------------------------------------
def _med(res: dict[str, Any], *path: str) -> float | None:
    node: Any = res["sections"]
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node.get("median") if isinstance(node, dict) else None


TARGETS: list[tuple[str, tuple[str, ...], str, float, str]] = [
    ("vmworker ops/s ÷ Celery ops/s", ("ratios", "vmworker_vs_celery"), ">=", VS_CELERY, "x"),
    ("vmworker ops/s ÷ broker ceiling", ("ratios", "vmworker_vs_ceiling"), ">=", VS_CEILING, "x"),
    (
        "vmworker p99 latency ÷ bare loop round trip (p50)",
        ("ratios", "p99_vs_bare_rtt_p50"),
        "<=",
        3.0,
        "x",
    ),
    (
        "VDSM-style Python hook, pre-warmed (per hook, chain of 10)",
        ("hooks", "direct", "python_prewarm", "per_hook_ms"),
        "<=",
        5.0,
        "ms",
    ),
    (
        "in-process hook (per hook, chain of 10)",
        ("hooks", "direct", "inproc", "per_hook_ms"),
        "<=",
        0.05,
        "ms",
    ),
    ("real QEMU start: worker ÷ libvirt direct", ("qemu", "ratio"), "<=", 1.1, "x"),
    ("live migration: worker ÷ libvirt direct", ("migration", "ratio"), "<=", 1.05, "x"),
    (
        "100 concurrent 200 ms-hook ops ÷ ideal time",
        ("scale", "concurrent", "ratio"),
        "<=",
        2.0,
        "x",
    ),
    ("worker RSS with 1,000 VMs", ("scale", "vms", "rss_loaded_mib"), "<=", 100.0, "MiB"),
    *fleet.TARGETS,
]


def judge(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, path, op, limit, unit in TARGETS:
        value = _med(res, *path)
        met = None if value is None else (value >= limit if op == ">=" else value <= limit)
        out.append(
            {
                "target": name,
                "path": list(path),
                "value": value,
                "op": op,
                "limit": limit,
                "unit": unit,
                "met": met,
            }
        )
    return out


# -- the report --------------------------------------------------------------------------------
def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if abs(x) >= 100:
            return f"{x:,.0f}"
        if abs(x) < 0.1:
            return f"{x:.3f}"
        return f"{x:.{digits}f}"
    return str(x)


def _row(label: str, s: Any, unit: str = "") -> str:
    if not isinstance(s, dict) or "median" not in s:
        return f"| {label} | - | - | - | {unit} |"
    return f"| {label} | {_fmt(s['median'])} | {_fmt(s['min'])} | {_fmt(s['max'])} | {unit} |"


def markdown(res: dict[str, Any], images: dict[str, str]) -> str:
    s = res["sections"]
    mark = {True: "met", False: "**missed**", None: "not measured"}
    lines = [
        f"Run of {res['started']} ({'smoke pass' if res['smoke'] else 'full run'}):"
        f" {res['params']['runs']} run(s), each figure the median with min and max;"
        f" load average {res['machine']['loadavg_start'][0]:.2f} at the start,"
        f" {res['machine']['loadavg_end'][0]:.2f} at the end, {res['machine']['cpus']} cores.",
        "",
        "| target | measured (median) | limit | |",
        "| --- | --- | --- | --- |",
    ]
    for t in res["targets"]:
        lines.append(
            f"| {t['target']} | {_fmt(t['value'])} {t['unit']} | {t['op']} {_fmt(t['limit'])}"
            f" {t['unit']} | {mark[t['met']]} |"
        )
    hdr = ["", "| figure | median | min | max | unit |", "| --- | --- | --- | --- | --- |"]
    lines += ["", "### Throughput and latency (start_vm on test:///default)", *hdr]
    for key, label in (
        ("broker_ceiling", "bare kombu loop"),
        ("celery", "Celery"),
        ("vmworker", "vmworker"),
    ):
        sec = s.get(key, {})
        if "skipped" in sec:
            lines.append(f"| {label} | skipped: {sec['skipped']} | | | |")
            continue
        lines.append(_row(f"{label}: ops/s", sec.get("ops_s"), "ops/s"))
        p50 = sec.get("rtt_p50_ms", sec.get("lat_p50_ms"))
        p99 = sec.get("rtt_p99_ms", sec.get("lat_p99_ms"))
        lines.append(_row(f"{label}: publish → after p50", p50, "ms"))
        lines.append(_row(f"{label}: publish → after p99", p99, "ms"))
        cpu = sec.get("cpu_ms_per_op")
        lines.append(_row(f"{label}: CPU per op (all its processes)", cpu, "ms"))
        for k, what, unit in (
            ("consumer_cores", "cores it kept busy", "cores"),
            ("broker_cpu_ms_per_op", "broker CPU per op meanwhile", "ms"),
            ("harness_cpu_ms_per_op", "harness CPU per op (publisher, tap)", "ms"),
            ("machine_busy_cores", "machine cores busy meanwhile", "cores"),
        ):
            if k in sec:
                lines.append(_row(f"{label}: {what}", sec[k], unit))
    sp = s.get("vmworker_split", {})
    if "ops_s" in sp:
        n = int(sp["processes"]["median"])
        label = f"{n} vmworker processes, VMs split (not shipped)"
        lines.append(_row(f"{label}: ops/s", sp["ops_s"], "ops/s"))
        lines.append(_row(f"{label}: CPU per op (all)", sp["cpu_ms_per_op"], "ms"))
        lines.append(_row(f"{label}: cores they kept busy", sp["consumer_cores"], "cores"))
        lines.append(_row(f"{label}: machine cores busy", sp["machine_busy_cores"], "cores"))
    r = s.get("ratios", {})
    for key, label in (
        ("vmworker_vs_celery", "vmworker ÷ Celery (ops/s)"),
        ("vmworker_vs_ceiling", "vmworker ÷ broker ceiling (ops/s)"),
        ("celery_vs_ceiling", "Celery ÷ broker ceiling (ops/s)"),
        ("split_vs_vmworker", "vmworker processes, VMs split ÷ one vmworker (ops/s)"),
        ("split_vs_celery", "vmworker processes, VMs split ÷ Celery (ops/s)"),
        ("split_vs_ceiling", "vmworker processes, VMs split ÷ broker ceiling (ops/s)"),
        ("p50_vs_bare_rtt_p50", "vmworker p50 ÷ bare loop p50"),
        ("p99_vs_bare_rtt_p50", "vmworker p99 ÷ bare loop p50"),
        ("p99_vs_bare_rtt_p99", "vmworker p99 ÷ bare loop p99"),
    ):
        if key in r:
            lines.append(_row(label, r[key], "x"))
    for key, label, unit in (
        (
            "machine_ops_s_at_vmworker_cpu",
            "most vmworker ops/s these cores allow at its CPU per op (every core busy)",
            "ops/s",
        ),
        (
            "cpu_allowed_for_celery_target",
            f"vmworker CPU per op at which {VS_CELERY:g} x Celery fits in these cores",
            "ms",
        ),
        (
            "cpu_allowed_for_ceiling_target",
            f"vmworker CPU per op at which {VS_CEILING:g} x the ceiling fits in these cores",
            "ms",
        ),
    ):
        if key in r:
            lines.append(_row(label, r[key], unit))
    if "vmworker" in s and "rss_mib" in s["vmworker"]:
        lines.append(
            _row(f"vmworker RSS after {res['params']['ops']} ops", s["vmworker"]["rss_mib"], "MiB")
        )
    h = s.get("hooks", {})
    if h:
        lines += ["", "### Hooks (before_vm_start)", *hdr]
        for kind in hooks.KINDS:
            d = h["direct"][kind]
            lines.append(_row(f"{kind}: one hook, run_chain", d["one_ms"], "ms"))
            lines.append(_row(f"{kind}: chain of 10, run_chain", d["chain10_ms"], "ms"))
            lines.append(_row(f"{kind}: per hook in a chain of 10", d["per_hook_ms"], "ms"))
        lines.append(
            _row("worker, no hooks: publish → after", h["worker"]["none"]["latency_ms"], "ms")
        )
        for kind in hooks.KINDS:
            lines.append(
                _row(
                    f"worker, chain of 10 {kind}: added per op", h["worker"][kind]["added_ms"], "ms"
                )
            )
    q = s.get("qemu", {})
    lines += ["", "### Real QEMU (qemu:///system, start_vm of tests/support.small_vm())", *hdr]
    if "skipped" in q:
        lines.append(f"| real QEMU | skipped: {q['skipped']} | | | |")
    elif q:
        lines.append(_row("through the worker: publish → after", q["worker_ms"], "ms"))
        lines.append(_row("libvirt direct: define + create", q["direct_ms"], "ms"))
        lines.append(_row("worker ÷ direct", q["ratio"], "x"))
    lines += migration.markdown_lines(res, hdr, _row)
    sc = s.get("scale", {})
    if sc:
        v, c = sc["vms"], sc["concurrent"]
        n = res["params"]["vms"]
        lines += ["", "### Scale", *hdr]
        lines.append(_row("worker RSS, idle", v["rss_idle_mib"], "MiB"))
        lines.append(_row(f"worker RSS with {n:,} VMs", v["rss_loaded_mib"], "MiB"))
        lines.append(_row(f"worker peak RSS with {n:,} VMs", v["rss_peak_mib"], "MiB"))
        lines.append(_row(f"{n:,} VMs defined + started", v["elapsed_s"], "s"))
        lines.append(
            _row(f"{res['params']['concurrent']} ops with a 200 ms hook", c["elapsed_s"], "s")
        )
        lines.append(_row("… ideal for the concurrency", c["ideal_s"], "s"))
        lines.append(_row("… ÷ ideal", c["ratio"], "x"))
    lines += fleet.markdown_lines(res, hdr, _row)
    if images:
        lines.append("")
        for title, path in images.items():
            lines.append(f"![{title}]({path})")
    return "\n".join(lines) + "\n"


def plots(res: dict[str, Any], out: Path, stem: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["sections"]
    made: dict[str, Path] = {}

    def bars(ax: Any, labels: list[str], stats: list[Any], color: str = "C0") -> None:
        med = [x["median"] if x else 0 for x in stats]
        lo = [x["median"] - x["min"] if x else 0 for x in stats]
        hi = [x["max"] - x["median"] if x else 0 for x in stats]
        ax.bar(labels, med, yerr=[lo, hi], capsize=4, color=color)
        for i, m in enumerate(med):
            ax.annotate(
                _fmt(m),
                (i, m),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )

    def save(fig: Any, name: str, title: str) -> None:
        path = out / f"{stem}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made[title] = path

    names = [("broker_ceiling", "bare kombu loop"), ("celery", "Celery"), ("vmworker", "vmworker")]
    present = [(k, lbl) for k, lbl in names if "ops_s" in s.get(k, {})]
    if present:
        fig, ax = plt.subplots(figsize=(7, 4))
        tput = [(lbl, s[k]["ops_s"]) for k, lbl in present]
        if "ops_s" in s.get("vmworker_split", {}):
            n = int(s["vmworker_split"]["processes"]["median"])
            tput.append((f"{n} vmworkers,\nVMs split\n(not shipped)", s["vmworker_split"]["ops_s"]))
        bars(ax, [lbl for lbl, _ in tput], [st for _, st in tput])
        ax.set_ylabel("start_vm per second (median, min-max)")
        ax.set_title("Throughput, same machine, same run")
        save(fig, "throughput", "Throughput")

        fig, ax = plt.subplots(figsize=(6, 4))
        width = 0.38
        for j, (pct, color) in enumerate((("50", "C0"), ("99", "C1"))):
            st = [s[k].get(f"rtt_p{pct}_ms", s[k].get(f"lat_p{pct}_ms")) for k, _ in present]
            xs = [i + (j - 0.5) * width for i in range(len(present))]
            med = [x["median"] for x in st]
            ax.bar(
                xs,
                med,
                width,
                label=f"p{pct}",
                color=color,
                yerr=[[x["median"] - x["min"] for x in st], [x["max"] - x["median"] for x in st]],
                capsize=3,
            )
        ax.set_xticks(range(len(present)), [lbl for _, lbl in present])
        ax.set_ylabel("publish → after, ms (one in flight)")
        ax.set_title("Latency")
        ax.legend()
        save(fig, "latency", "Latency")

    h = s.get("hooks")
    if h:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        kinds = list(hooks.KINDS)
        bars(a1, kinds, [h["direct"][k]["per_hook_ms"] for k in kinds], "C2")
        a1.set_yscale("log")
        a1.set_ylabel("ms per hook (chain of 10, run_chain)")
        a1.set_title("Cost per hook")
        bars(a2, kinds, [h["worker"][k]["added_ms"] for k in kinds], "C3")
        a2.set_yscale("symlog", linthresh=1)
        a2.set_ylabel("ms added per start_vm (chain of 10)")
        a2.set_title("Through the worker")
        for ax in (a1, a2):
            ax.tick_params(axis="x", labelrotation=15)
        save(fig, "hooks", "Hooks")

    q, sc = s.get("qemu", {}), s.get("scale", {})
    if sc:
        fig, axes = plt.subplots(1, 3, figsize=(12, 4))
        if "ratio" in q:
            bars(axes[0], ["worker", "libvirt direct"], [q["worker_ms"], q["direct_ms"]], "C4")
            axes[0].set_ylabel("ms per start (real QEMU)")
            axes[0].set_title("qemu:///system start")
        else:
            axes[0].set_axis_off()
        v, c = sc["vms"], sc["concurrent"]
        bars(
            axes[1],
            ["idle", f"{res['params']['vms']} VMs"],
            [v["rss_idle_mib"], v["rss_loaded_mib"]],
            "C5",
        )
        axes[1].axhline(100, color="red", linestyle="--", linewidth=1)
        axes[1].set_ylabel("worker RSS, MiB")
        axes[1].set_title("Memory")
        bars(axes[2], ["measured", "ideal"], [c["elapsed_s"], c["ideal_s"]], "C6")
        axes[2].set_ylabel("seconds")
        axes[2].set_title(f"{res['params']['concurrent']} ops x 200 ms hook")
        save(fig, "qemu-scale", "Real QEMU and scale")
    return made


def update_doc(md: str) -> None:
    if not DOC.exists():
        return
    text = DOC.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        return
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    DOC.write_text(f"{head}{DOC_BEGIN}\n{md}{DOC_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()  # a terminated run cleans up as an interrupted one does
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    ap.add_argument("--smoke", action="store_true", help="tiny counts, one run (CI)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    ap.add_argument("--runs", type=int, help="runs per figure (default 5; smoke 1)")
    ap.add_argument(
        "--only",
        action="append",
        choices=["core", "hooks", "qemu", "migration", "scale", "fleet"],
        help="run only these parts (repeatable)",
    )
    ap.add_argument("--no-doc", action="store_true", help="never touch docs/performance.md")
    args = ap.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    p = params(args.smoke, args.runs)
    started = datetime.now(UTC)
    res: dict[str, Any] = {
        "started": now_iso(),
        "smoke": args.smoke,
        "params": p,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_start": loadavg(),
        },
        "sections": {},
    }
    for mod in ("kombu", "amqp", "celery", "libvirt"):
        try:
            res["machine"][mod] = __import__(mod).__version__
        except Exception:
            res["machine"][mod] = None
    parts: list[tuple[str, Callable[[Path, dict[str, int], dict[str, Any]], None]]] = [
        ("core", core),
        ("hooks", hooks_section),
        ("qemu", qemu_section),
        ("migration", migration.section),
        ("scale", scale_section),
        ("fleet", fleet_section),
    ]
    failed = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vmworker-bench-") as tmp:
        for name, fn in parts:
            if args.only and name not in args.only:
                continue
            if name == "migration" and args.smoke and not args.only:
                continue  # two libvirtds and real migrations: a smoke pass of its own
            try:
                fn(Path(tmp), p, res)
            except SystemExit:
                raise
            except Exception as exc:
                traceback.print_exc()
                failed.append(name)
                res["sections"].setdefault(name, {})["error"] = f"{type(exc).__name__}: {exc}"
    res["machine"]["loadavg_end"] = loadavg()
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    res["targets"] = judge(res)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = started.strftime("%Y-%m-%d") + ("-smoke" if args.smoke else "")
    try:
        images = plots(res, args.out, stem)
    except ImportError as exc:  # the bench extra is not installed: a smoke pass goes on
        if not args.smoke:
            raise
        say(f"NO PLOTS: matplotlib is not installed ({exc})")
        images = {}
    rel = {t: os.path.relpath(pth, args.out) for t, pth in images.items()}
    md = markdown(res, rel)
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(md)
    if not args.smoke and not args.no_doc and args.out.resolve() == DEFAULT_OUT.resolve():
        doc_rel = {t: os.path.relpath(pth, DOC.parent) for t, pth in images.items()}
        update_doc(markdown(res, doc_rel))
    say(f"wrote {args.out / (stem + '.json')} and {stem}.md in {res['elapsed_s']} s")
    print(md)
    if failed:
        say(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
