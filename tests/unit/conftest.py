"""Fixtures shared by the unit tests (no broker, no libvirtd, no root)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty hooks root (mode 0755, owned by us) a test may fill."""
    r = tmp_path / "hooks"
    r.mkdir()
    r.chmod(0o755)
    return r
