# ruff: noqa: SIM112  (the variable names are VDSM's protocol)
"""hooking - VDSM's helper module for hook scripts, as vmworker provides it.

The hook engine puts this directory on the scripts' PYTHONPATH, so `import hooking` works in
a script written for VDSM. Standard library only: scripts run under the system python3.

A VM hook finds the domain XML (or a device's XML) in the file named by `_hook_domxml`, a
JSON hook its data in the file named by `_hook_json`; it may rewrite that file.

Return codes:
0 - the hook ended successfully.
1 - the hook failed, other hooks should be processed.
2 - the hook failed, no further hooks should be processed.
>2 - reserved (logged as unexpected, then treated as 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from xml.dom import minidom

__all__ = [
    "dump_vm_launch_flags_to_file",
    "execCmd",
    "exit_hook",
    "load_vm_launch_flags_from_file",
    "log",
    "read_domxml",
    "read_json",
    "tobool",
    "write_domxml",
    "write_json",
]

# where the engine keeps per-VM files for hooks (the worker's state directory)
_STATE_DIR_VAR = "_hook_state_dir"
_LAUNCH_FLAGS_FILE = "launchflags"


def read_domxml():
    """The payload XML as a minidom Document."""
    with open(os.environ["_hook_domxml"], "rb") as f:
        return minidom.parseString(f.read().decode("utf-8"))


def write_domxml(domxml):
    """Replace the payload with this minidom Document."""
    with open(os.environ["_hook_domxml"], "wb") as f:
        f.write(domxml.toxml(encoding="utf-8"))


def read_json():
    with open(os.environ["_hook_json"]) as f:
        return json.loads(f.read())


def write_json(data):
    with open(os.environ["_hook_json"], "w") as f:
        f.write(json.dumps(data))


def log(message):
    """One line to stderr: the engine keeps it in the hook's event."""
    sys.stderr.write(message + "\n")


def exit_hook(message, return_code=2):
    """Print message to stderr and exit; the default rc 2 stops the chain."""
    sys.stderr.write(message + "\n")
    sys.exit(return_code)


def tobool(s):
    """VDSM's conv.tobool: True, 'true' (any case) or a non-zero integer are true."""
    try:
        if s is None:
            return False
        if isinstance(s, bool):
            return s
        if s.lower() == "true":
            return True
        return bool(int(s))
    except (AttributeError, TypeError, ValueError):
        return False


def execCmd(
    command,
    sudo=False,
    cwd=None,
    data=None,
    raw=False,
    printable=None,
    env=None,
    nice=None,
    ioclass=None,
    ioclassdata=None,
    setsid=False,
    execCmdLogger=None,
    resetCpuAffinity=True,
):
    """VDSM's execCmd: (rc, out, err) as bytes, or lists of bytes lines unless raw.

    The command is wrapped as VDSM wraps it: `ionice`, `nice`, `setsid`, then `sudo -n` (only
    when not root). `printable`, `execCmdLogger` and `resetCpuAffinity` are accepted and
    unused (VDSM logs the command; only VDSM itself is pinned to CPUs)."""
    command = list(command)
    if ioclass is not None:
        extra = ["-n", str(ioclassdata)] if ioclassdata is not None else []
        command = ["ionice", "-c", str(ioclass), *extra, *command]
    if nice is not None:
        command = ["nice", "-n", str(nice), *command]
    if setsid:
        command = ["setsid", *command]
    if sudo and os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    proc = subprocess.Popen(
        command,
        close_fds=True,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(data)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if out is None:
        out = b""
    if not raw:
        return proc.returncode, out.splitlines(False), err.splitlines(False)
    return proc.returncode, out, err


def _launch_flags_path(vm_id):
    state = os.environ.get(_STATE_DIR_VAR)
    if not state:
        raise RuntimeError(
            f"{_STATE_DIR_VAR} is not set: launch flags are kept by the worker that runs the hook"
        )
    if not vm_id or "/" in vm_id or vm_id in (".", ".."):
        raise ValueError(f"invalid VM id {vm_id!r}")
    return os.path.join(state, vm_id, _LAUNCH_FLAGS_FILE)


def load_vm_launch_flags_from_file(vm_id):
    """The libvirt launch flags a hook saved for this VM, 0 (VIR_DOMAIN_NONE) if none."""
    try:
        path = _launch_flags_path(vm_id)
    except RuntimeError:
        return 0
    if os.path.isfile(path):
        with open(path) as f:
            return int(f.readline())
    return 0


def dump_vm_launch_flags_to_file(vm_id, flags):
    """Save libvirt launch flags for this VM (a file per VM under the worker's state dir)."""
    path = _launch_flags_path(vm_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(str(flags))
