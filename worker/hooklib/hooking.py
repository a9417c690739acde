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
    "execCmd",
    "exit_hook",
    "log",
    "read_domxml",
    "read_json",
    "tobool",
    "write_domxml",
    "write_json",
]


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


def execCmd(command, sudo=False, cwd=None, data=None, raw=False, env=None, **_ignored):
    """VDSM's execCmd, enough for hooks: (rc, out, err), lists of lines unless raw."""
    if sudo and os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    proc = subprocess.run(
        list(command),
        cwd=cwd,
        input=data.encode("utf-8") if isinstance(data, str) else data,
        capture_output=True,
        env=env,
    )
    if raw:
        return proc.returncode, proc.stdout, proc.stderr
    return (
        proc.returncode,
        proc.stdout.decode("utf-8", "replace").splitlines(),
        proc.stderr.decode("utf-8", "replace").splitlines(),
    )
