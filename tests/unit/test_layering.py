"""The package layering: `handlers/` (operations against libvirt) needs nothing from `worker/`
(AMQP, hooks, the service), so the two never import each other in a cycle."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import handlers

_PROBE = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m == "worker" or m.startswith("worker."))))
"""


def test_importing_every_handlers_module_imports_nothing_from_worker():
    names = ["handlers"] + [
        m.name for m in pkgutil.walk_packages(handlers.__path__, prefix="handlers.")
    ]
    assert "handlers.lifecycle" in names and "handlers.domxml.raw" in names
    # a fresh interpreter: this test process has imported worker modules already
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(names)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout) == []
