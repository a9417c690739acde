"""Hooks owned by neither root nor the worker's user are refused (making such a file takes root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.test_hooks_security import hook, run


@pytest.fixture
def root(hooks_root: Path) -> Path:
    if os.geteuid() != 0:
        pytest.fail("needs root to chown (make test runs as root)")
    return hooks_root


def test_script_owned_by_another_user_is_refused(root: Path) -> None:
    p = hook(root, "before_vm_start", "10_theirs", "exit 0")
    os.chown(p, 65534, -1)
    res = run(root)
    assert "owned by uid 65534" in (res.scripts[0].refused or "")


def test_hook_dir_owned_by_another_user_is_refused(root: Path) -> None:
    hook(root, "before_vm_start", "10_mine", "exit 0")
    os.chown(root / "before_vm_start", 65534, -1)
    res = run(root)
    assert "hook directory is owned by uid 65534" in (res.scripts[0].refused or "")
