"""A missing hook point is told from a settled root's listing (one `stat`), and a point made
afterwards is seen at once."""

from __future__ import annotations

import os
from pathlib import Path

from worker.hooks import scripts


def _settle(path: Path) -> None:
    old = os.stat(path).st_mtime_ns - 10 * scripts._SETTLED_NS
    os.utime(path, ns=(old, old))


def test_a_point_made_in_a_settled_root_is_seen_at_once(tmp_path: Path) -> None:
    root = tmp_path / "hooks"
    root.mkdir(mode=0o755)
    _settle(root)
    assert not scripts.has_entries(root, "before_vm_start")
    assert str(root) in scripts._ROOT_LISTINGS  # the listing is kept for the next look-up
    assert scripts.discover(root, "before_vm_start") == []
    (root / "before_vm_start").mkdir()
    (root / "before_vm_start" / "10_x").write_text("#!/bin/sh\n")
    (root / "before_vm_start" / "10_x").chmod(0o755)
    assert scripts.has_entries(root, "before_vm_start")  # the root's mtime moved
    assert [s.name for s in scripts.discover(root, "before_vm_start")] == ["10_x"]


def test_a_root_changed_just_now_is_listed_each_time(tmp_path: Path) -> None:
    root = tmp_path / "hooks"
    root.mkdir(mode=0o755)
    assert not scripts.has_entries(root, "after_vm_start")
    assert str(root) not in scripts._ROOT_LISTINGS  # too recent to be trusted


def test_a_removed_root_is_still_reported(tmp_path: Path) -> None:
    root = tmp_path / "hooks"
    root.mkdir(mode=0o755)
    _settle(root)
    assert scripts.discover(root, "before_vm_start") == []
    root.rmdir()
    found = scripts.discover(root, "before_vm_start")
    assert [s.refused for s in found] == [f"hooks root {root} does not exist"]


def test_none_of_several_points_told_by_one_listing(tmp_path: Path) -> None:
    root = tmp_path / "hooks"
    (root / "after_vm_start").mkdir(parents=True)
    _settle(root)
    assert scripts.all_absent(root, ["before_vm_start", "before_device_create"])
    assert not scripts.all_absent(root, ["before_vm_start", "after_vm_start"])
