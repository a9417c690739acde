"""Fixtures shared by the unit tests (no broker, no libvirtd, no root)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def root(hooks_root: Path) -> Path:
    """An empty hooks root (mode 0755, owned by us) a test may fill: tests/conftest.py's."""
    return hooks_root
