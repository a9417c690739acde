"""VDSM's own hook scripts (tests/data/vdsm_hooks), installed as an oVirt host installs them.

Each hook's Makefile.am says which file goes to which hook-point directory under which name
(`$(INSTALL_SCRIPT) $(srcdir)/before_vm_start.py $(DESTDIR)$(vdsmhooksdir)/before_vm_start/
50_smbios`, or a `$(LN_S)` symlink); `install` does just that, byte for byte, in a hooks root.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "vdsm_hooks"
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\S+)\s*$")
_INSTALL = re.compile(r"\$\((INSTALL_SCRIPT|LN_S)\)\s+(?:-\S+\s+)*(\S+)\s+(\S+)")
_HOOKSDIR = "$(DESTDIR)$(vdsmhooksdir)/"


@dataclass(frozen=True)
class Installed:
    """One file a hook's Makefile.am puts in the hooks tree."""

    hook: str  # the VDSM hook (its directory in vdsm_hooks/)
    source: str  # its file name there, or the symlink's target
    point: str  # the hook-point directory
    name: str  # the file name in it
    link: bool = False


def layout(hook: str) -> list[Installed]:
    """Where `hook`'s Makefile.am installs its scripts (those under the hooks directory)."""
    text = (DATA / hook / "Makefile.am").read_text().replace("\\\n", " ")
    variables = {m[1]: m[2] for m in map(_ASSIGN.match, text.splitlines()) if m}
    found: list[Installed] = []
    for kind, src, dst in _INSTALL.findall(text):
        for name, value in variables.items():
            src, dst = src.replace(f"$({name})", value), dst.replace(f"$({name})", value)
        if not dst.startswith(_HOOKSDIR) or dst.count("/") < 2:
            continue  # not a hook (a helper, a unit, a sudoers file)
        point, name = dst[len(_HOOKSDIR) :].split("/")
        link = kind == "LN_S"
        source = src if link else src.removeprefix("$(srcdir)/")
        if link or (DATA / hook / source).is_file():
            item = Installed(hook, source, point, name, link)
            if item not in found:
                found.append(item)
    return found


def install(root: Path, *hooks: str) -> list[Installed]:
    """Install these VDSM hooks into the hooks root `root` as their Makefile.am does."""
    done = []
    for hook in hooks:
        for item in layout(hook):
            pdir = root / item.point
            pdir.mkdir(mode=0o755, exist_ok=True)
            pdir.chmod(0o755)
            dest = pdir / item.name
            if item.link:
                os.symlink(item.source, dest)
            else:
                shutil.copyfile(DATA / hook / item.source, dest)
                dest.chmod(0o755)
            done.append(item)
    return done


def all_hooks() -> list[str]:
    """Every VDSM hook in the test data."""
    return sorted(p.parent.name for p in DATA.glob("*/Makefile.am"))
