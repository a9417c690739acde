"""Storage checks: where disk files may live, what format they are, what the guest calls them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from handlers.errors import OpError, validation

QCOW2_MAGIC = b"QFI\xfb"

# each bus's target name prefix, by spec name and by libvirt name; sata and scsi share `sd`
TARGET_PREFIX: dict[str, str] = {
    "virtio": "vd",
    "virtio-scsi": "sd",
    "scsi": "sd",
    "sata": "sd",
    "usb": "sd",
    "ide": "hd",
}
IDE_TARGETS = ("hda", "hdb", "hdc", "hdd")  # two IDE buses with a master and a slave each


def detect_format(path: str | os.PathLike[str]) -> str:
    """`qcow2` if the file starts with the qcow2 magic, else `raw` (also when it is missing)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(QCOW2_MAGIC))
    except OSError:
        return "raw"
    return "qcow2" if head == QCOW2_MAGIC else "raw"


def check_path_under_roots(
    path: str | os.PathLike[str], roots: Sequence[str | os.PathLike[str]], field: str = "path"
) -> Path:
    """The resolved `path` if it lies under one of `roots`, else a validation OpError.

    `..` components are refused outright; symlinks are resolved (in the path and in the
    roots) before comparing, so a link that points out of a root is refused too.
    """
    raw = Path(path)
    if not raw.is_absolute():
        raise validation(f"{field}: {str(path)!r} is not an absolute path", field=field)
    if ".." in raw.parts:
        raise validation(f"{field}: {str(path)!r} contains '..'", field=field)
    resolved = raw.resolve(strict=False)
    for root in roots:
        root_resolved = Path(root).resolve(strict=False)
        if resolved == root_resolved or resolved.is_relative_to(root_resolved):
            return resolved
    allowed = ", ".join(str(r) for r in roots) or "(none configured)"
    raise validation(
        f"{field}: {str(path)!r} is outside the storage roots ({allowed})",
        code="path_outside_storage_roots",
        field=field,
    )


def target_name(prefix: str, index: int) -> str:
    """`prefix` plus the index in bijective base 26: 0 → a, 25 → z, 26 → aa, 701 → zz, 702 → aaa."""
    if index < 0:
        raise ValueError("index must be >= 0")
    letters = ""
    n = index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return prefix + letters


def target_prefix(bus: str) -> str:
    try:
        return TARGET_PREFIX[bus]
    except KeyError:
        raise validation(f"bus: unknown bus {bus!r}", field="bus") from None


def next_disk_target(bus: str, used: Iterable[str]) -> str:
    """The first target device name for `bus` not in `used` (vda, vdb, ..., vdz, vdaa, ...)."""
    prefix = target_prefix(bus)
    taken = set(used)
    index = 0
    while True:
        if prefix == "hd" and index >= len(IDE_TARGETS):
            raise OpError(
                code="no_free_target",
                message="bus: no free IDE target (hda-hdd all used)",
                source="validation",
                details={"field": "bus"},
            )
        name = target_name(prefix, index)
        if name not in taken:
            return name
        index += 1


def assign_targets(drives: Sequence[tuple[str, str | None]]) -> list[str]:
    """Target names for `(bus, wanted_target)` pairs, in order, without clashes.

    Wanted targets are kept and reserved first; the others get the next free name of their bus.
    """
    used = {target for _, target in drives if target is not None}
    out = []
    for bus, target in drives:
        if target is None:
            target = next_disk_target(bus, used)
            used.add(target)
        out.append(target)
    return out
