"""The hook engine: VDSM-compatible hook chains, knowing neither AMQP nor libvirt.

    engine = HookEngine(root, timeout=30.0)
    res = engine.run_chain("before_vm_start", domxml, vm_id=uuid, custom={"nestedvt": "true"})
    if res.failed: ...            # res.failure_stderr(), res.to_event()
    domxml = res.payload

See docs/hooks.md for the protocol seen by scripts.
"""

from worker.hooks.custom import CustomPropertyError, validate_custom
from worker.hooks.engine import ChainResult, HookEngine, ScriptResult
from worker.hooks.inproc import HookContext, HookFailed
from worker.hooks.points import POINTS, HookPoint, get_point
from worker.hooks.runner import Completed, ProcessRunner, Runner
from worker.hooks.scripts import HookRootError

__all__ = [
    "POINTS",
    "ChainResult",
    "Completed",
    "CustomPropertyError",
    "HookContext",
    "HookEngine",
    "HookFailed",
    "HookPoint",
    "HookRootError",
    "ProcessRunner",
    "Runner",
    "ScriptResult",
    "get_point",
    "validate_custom",
]
