"""`vmworker demo` (what `make demo` runs): the whole path with no services, exit 0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_prints_before_and_after_for_every_step_and_exits_0(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "worker", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        # its state directory (journal, fleet store) under this test's own, not left in /tmp
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "TERM": "dumb", "TMPDIR": str(tmp_path)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for op in ("define_vm", "start_vm", "pause_vm", "resume_vm", "shutdown_vm", "undefine_vm"):
        assert re.search(rf"before\s+{op}", text), op
        assert re.search(rf"after\s+{op}", text), op
    assert "validation/not_json" in text
    assert "validation/unknown_op" in text
    assert "libvirt/no_domain" in text
    assert "no-op" in text
    assert "demo OK" in text
    assert "policy: VMs named forbidden-* may not run here" in text  # a before hook said no
    assert re.search(r"channels, after the hooks: .*tools-guest-agent\.0", text)
    assert "4 dead-lettered" in text
    # the fleet store it filled answers: the requests, the failed ones, the VMs
    store = re.search(
        r"fleet store \((sqlite:///\S+)\): \d+ events, (\d+) requests \((\d+) failed\)", text
    )
    assert store, text
    assert store.group(1).startswith(f"sqlite:///{tmp_path}/vmworker-demo-")
    assert int(store.group(2)) >= 8 and int(store.group(3)) >= 1
    assert f"vmworker fleet serve --no-ingest --database-url {store.group(1)}" in text
