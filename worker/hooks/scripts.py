"""Finding a chain's scripts on disk, and deciding which of them may run.

A chain is every regular executable file of `<root>/<point>/` (symlinks followed, dotfiles and
subdirectories skipped) in plain sorted order, as in VDSM. The hooks root itself must be a
readable directory: an engine is not made over one that is not (`check_root`). A script is
refused, never run, when it, its hook-point directory or the hooks root is group/world-writable
or owned by someone other than root or the worker's effective uid. Directories above the root
are the administrator's business and are not checked.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Script:
    """One executable of a hook-point directory, as found now."""

    name: str
    path: Path
    sha256: str | None
    refused: str | None = None


class HookRootError(Exception):
    """The hooks root cannot hold hooks: missing, not a directory, or unreadable."""


def root_problem(root: Path) -> str | None:
    """Why `root` cannot be a hooks root, or None. An empty directory is a fine root."""
    try:
        st = os.stat(root)  # follows symlinks: a dangling one does not exist
    except (FileNotFoundError, NotADirectoryError):
        return f"hooks root {root} does not exist"
    except OSError as exc:
        return f"hooks root {root}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"hooks root {root} is not a directory"
    if not os.access(root, os.R_OK | os.X_OK):
        return f"hooks root {root} is not readable by uid {os.geteuid()}"
    return None


def check_root(root: Path) -> Path:
    """`root` made absolute; HookRootError if it cannot be a hooks root."""
    root = Path(os.path.abspath(root))
    problem = root_problem(root)
    if problem:
        raise HookRootError(problem)
    return root


def trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def insecure(st: os.stat_result, what: str) -> str | None:
    """Why a file or directory with this stat may not be trusted, or None."""
    if st.st_uid not in trusted_uids():
        return f"{what} is owned by uid {st.st_uid}, not root or the worker (uid {os.geteuid()})"
    if st.st_mode & stat.S_IWOTH:
        return f"{what} is world-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_mode & stat.S_IWGRP:
        return f"{what} is group-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_dir(path: Path, what: str) -> str | None:
    """Why this directory may not hold hooks, or None; a missing directory is fine."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{what} {path}: {exc.strerror}"
    reason = insecure(st, what)
    return f"{reason}: {path}" if reason else None


def file_sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(65536), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _is_executable_file(path: Path) -> os.stat_result | None:
    try:
        st = os.stat(path)  # follows symlinks
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
        return None
    return st


def discover(root: Path, point: str) -> list[Script]:
    """The scripts of `<root>/<point>/` in run order, each with why it is refused (or None)."""
    if _absent(root, point):
        return []
    try:  # (os.path: each chain of each operation lists its directory; pathlib is slower)
        names = sorted(n for n in os.listdir(os.path.join(root, point)) if not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError) as exc:
        # no such point is an empty chain; no root (removed since start-up) is not
        gone = _root_gone(root, exc)
        return [Script(name=point, path=root, sha256=None, refused=gone)] if gone else []
    except OSError as exc:
        # a chain we cannot even list must not pass as an empty one
        unreadable = f"hook directory {root / point}: {exc.strerror}"
        return [Script(name=point, path=root / point, sha256=None, refused=unreadable)]
    if not names:  # nothing to run, so nothing to refuse: no checks of the directories
        return []
    pdir = root / point
    # one bad directory refuses every script in it: the chain fails closed
    dir_reason = check_dir(root, "hooks root") or check_dir(pdir, "hook directory")
    found: list[Script] = []
    for name in names:
        path = pdir / name
        st = _is_executable_file(path)
        if st is None:
            continue
        reason = dir_reason or insecure(st, "script")
        found.append(Script(name=name, path=path, sha256=file_sha256(path), refused=reason))
    return found


# root -> (its stat key, the names it held): what `_absent` answers from without listing
_ROOT_LISTINGS: dict[str, tuple[tuple[int, int, int, int, int], frozenset[str]]] = {}
_SETTLED_NS = 2_000_000_000  # a listing is kept once the root's mtime is this much older


def _absent(root: Path, point: str) -> bool:
    return all_absent(root, (point,))


def all_absent(root: Path, points: Iterable[str]) -> bool:
    """Whether every `<root>/<point>` is certainly not there, told by one `stat` of a readable root
    whose entries were listed before and whose times have not moved since (an entry made or
    removed in it changes its mtime; its mode or owner, its ctime). A listing is kept only when
    the root's mtime was already `_SETTLED_NS` old when it was made, so that a change within
    the file system's clock tick cannot hide behind an unchanged time. False when unsure: the
    caller then looks."""
    r = os.fspath(root)
    try:
        st = os.stat(r)
    except OSError:
        return False
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
    hit = _ROOT_LISTINGS.get(r)
    if hit is not None and hit[0] == key:
        return hit[1].isdisjoint(points)
    now = time.time_ns()
    if now - st.st_mtime_ns < _SETTLED_NS or not stat.S_ISDIR(st.st_mode):
        return False
    if not os.access(r, os.R_OK | os.X_OK):
        return False
    try:
        names = frozenset(os.listdir(r))
    except OSError:
        return False
    _ROOT_LISTINGS[r] = (key, names)
    return names.isdisjoint(points)


def has_entries(root: Path, point: str) -> bool:
    """Whether `<root>/<point>/` may hold a script: it lists a name (dotfiles aside), or cannot
    be listed for another reason than not being there (the chain then reports why)."""
    if _absent(root, point):
        return False
    try:
        return any(not n.startswith(".") for n in os.listdir(os.path.join(root, point)))
    except (FileNotFoundError, NotADirectoryError) as exc:
        return _root_gone(root, exc) is not None
    except OSError:
        return True


def _root_gone(root: Path, exc: OSError) -> str | None:
    """`root_problem` after listing one of its points failed with `exc`. A point missing from a
    root we may read and search is the common case, told in one system call instead of two: a
    root that is not a directory fails the listing with NotADirectoryError, not this one."""
    if isinstance(exc, FileNotFoundError) and os.access(root, os.R_OK | os.X_OK):
        return None
    return root_problem(root)


def skipped(root: Path, point: str) -> list[tuple[str, str]]:
    """(name, why) for each entry of `<root>/<point>/` that is not run (dotfiles aside)."""
    pdir = root / point
    try:
        names = sorted(n for n in os.listdir(pdir) if not n.startswith("."))
    except OSError:
        return []  # a missing point has nothing to skip; an unreadable one is refused
    found = []
    for name in names:
        path = pdir / name
        try:
            st = os.stat(path)
        except OSError as exc:
            dangling = isinstance(exc, FileNotFoundError) and os.path.islink(path)
            why = "dangling symlink" if dangling else exc.strerror or str(exc)
            found.append((name, why))
            continue
        if stat.S_ISDIR(st.st_mode):
            found.append((name, "a directory"))
        elif not stat.S_ISREG(st.st_mode):
            found.append((name, "not a regular file"))
        elif not os.access(path, os.X_OK):
            found.append((name, "not executable"))
    return found


def point_dirs(root: Path) -> list[str]:
    """Every directory name directly under the hooks root (known point or not)."""
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []
