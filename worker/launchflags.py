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
    """Write `flags` for the chains to read and change, as VDSM does before `before_vm_start`.
    (`os` calls on a file descriptor: this runs before every start; pathlib and text files
    cost several more system calls each.)"""
    d = os.path.join(state_dir, vm_id)
    tmp = os.path.join(d, f".{FILE}.{os.getpid()}")
    mode = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        fd = os.open(tmp, mode, 0o666)
    except FileNotFoundError:  # the VM's first start here
        os.makedirs(d, exist_ok=True)
        fd = os.open(tmp, mode, 0o666)
    try:
        os.write(fd, str(flags).encode())
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(d, FILE))  # a hook never reads half a file


def load(state_dir: Path, vm_id: str) -> int | None:
    """The flags in the file (None: no file); `validation/bad_launch_flags` when a hook left
    something that is not an integer."""
    p = os.path.join(state_dir, vm_id, FILE)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    text = b"".join(chunks).decode(errors="replace")
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
        os.unlink(os.path.join(state_dir, vm_id, FILE))
