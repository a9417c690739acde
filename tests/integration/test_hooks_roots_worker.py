"""A relative hooks root through the real worker (RabbitMQ, test:///default), in both runners."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from tests.support import write_hook as hook

PYTHON3 = Path(sys.executable).with_name("python3")  # a name the pre-warmed runner takes
POLICY = """#!/bin/sh
if grep -q "<name>forbidden-" "$_hook_domxml"; then
    echo "policy: VMs named forbidden-* may not run here" >&2
    exit 2
fi
echo policy-ok >&2
"""
# only a script run in the pre-warmed server finds `hooking` already imported
WARM = f"#!{PYTHON3}\nimport sys; print('warm' if 'hooking' in sys.modules else 'cold')\n"


def vm(prefix: str) -> dict[str, object]:
    return {
        "uuid": str(uuid.uuid4()),
        "name": f"{prefix}-{uuid.uuid4().hex[:8]}",
        "vcpus": 1,
        "memory_mib": 64,
    }


@pytest.mark.parametrize("prewarm", [False, True], ids=["exec", "prewarm"])
def test_a_relative_hooks_root_runs_the_policy_in_both_runners(
    env, tap, start_worker, test_domains, hooks_root, monkeypatch, prewarm
):
    hook(hooks_root, "before_vm_start", "10_policy", POLICY)
    hook(hooks_root, "before_vm_start", "20_py", WARM)
    monkeypatch.chdir(hooks_root.parent)
    start_worker(hooks_root=Path(hooks_root.name), hook_prewarm=prewarm)
    monkeypatch.chdir("/")  # the root was made absolute when the worker was configured

    ok = vm("vmw-rel")
    test_domains.append(str(ok["uuid"]))
    d = tap.wait_terminal(env.publish("start_vm", ok), 30)["data"]
    assert d["phase"] == "after", d.get("error")
    by = {h["name"]: h for h in d["hooks"] if h["point"] == "before_vm_start"}
    assert by["10_policy"]["rc"] == 0 and by["10_policy"]["stderr_tail"] == "policy-ok\n"
    assert by["20_py"]["rc"] == 0
    assert by["20_py"]["stdout_tail"] == ("warm\n" if prewarm else "cold\n")

    bad = vm("forbidden")
    test_domains.append(str(bad["uuid"]))
    d = tap.wait_terminal(env.publish("start_vm", bad), 30)["data"]
    assert d["phase"] == "fail"
    (policy,) = [h for h in d["hooks"] if h["name"] == "10_policy"]
    assert policy["rc"] == 2 and "may not run here" in policy["stderr_tail"]
