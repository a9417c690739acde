"""VDSM's launch-flags file: libvirt start flags a VM's hooks may change, kept under the hooks'
state directory as `<state_dir>/<vm_id>/launchflags` (worker/hooklib/hooking.py reads and writes
the same file from a script)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from handlers.errors import OpError

FILE = "launchflags"


def path(state_dir: Path, vm_id: str) -> Path:
    return state_dir / vm_id / FILE


def dump(state_dir: Path, vm_id: str, flags: int) -> None:
    """Write `flags` for the chains to read and change, as VDSM does before `before_vm_start`."""
    p = path(state_dir, vm_id)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{FILE}.{os.getpid()}")
    tmp.write_text(str(flags))
    os.replace(tmp, p)  # a hook never reads half a file


def load(state_dir: Path, vm_id: str) -> int | None:
    """The flags in the file (None: no file); `validation/bad_launch_flags` when a hook left
    something that is not an integer."""
    p = path(state_dir, vm_id)
    try:
        text = p.read_text()
    except FileNotFoundError:
        return None
    try:
        return int(text.partition("\n")[0])  # VDSM reads the first line
    except ValueError:
        raise OpError(
            "bad_launch_flags",
            f"launch flags file {p} holds {text[:40]!r}, not an integer (a hook wrote it)",
            "validation",
        ) from None


def remove(state_dir: Path, vm_id: str) -> None:
    """Remove the file once the start's chains have run (VDSM does too); its directory stays."""
    with contextlib.suppress(FileNotFoundError):
        path(state_dir, vm_id).unlink()
