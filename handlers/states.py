"""Which VM states each operation acts from: the rule behind docs/protocol.md's state table.

An operation asked of a VM already where it would take it is a no-op success; asked of a VM in a
state it cannot act from, it fails with `bad_state` (`no_domain` when there is no VM) before any
`before_*` hook or libvirt call, the error carrying the state found and the states it acts from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import libvirt

from handlers.base import UNDEFINED, Ctx
from handlers.errors import OpError
from handlers.message import OpMessage

OFF = frozenset({"shutoff", "crashed"})
RUNNING = frozenset({"running", "blocked"})
PAUSED = frozenset({"paused"})
# shutting down, suspended to RAM, or a state this libvirt has no word for: active all the same
OTHER = frozenset({"shutdown", "pmsuspended", "nostate", "unknown"})
ACTIVE = RUNNING | PAUSED | OTHER
DEFINED = OFF | ACTIVE
LIVE = RUNNING | PAUSED  # a domain whose devices, vCPUs and memory can be changed live

DEVICE_OPS = frozenset(
    {
        "attach_disk",
        "detach_disk",
        "attach_nic",
        "detach_nic",
        "update_device",
        "set_vcpus",
        "set_memory",
    }
)


@dataclass(frozen=True)
class Rule:
    """`already`: the op's effect is there (a no-op); `acts_from`: the op runs; else bad_state,
    its message ending with the hint for the state found, if any."""

    already: frozenset[str]
    acts_from: frozenset[str]
    hints: dict[str, str] = field(default_factory=dict)


def _hint(states: frozenset[str], text: str) -> dict[str, str]:
    return dict.fromkeys(states, text)


NO_STATE = frozenset[str]()
_DEVICE = Rule(NO_STATE, DEFINED)  # their own `done` says whether the change is already there
_START = _hint(PAUSED, "resume_vm runs it")
_START_PAUSED = _hint(RUNNING, "pause_vm pauses it")
_START_IT = _hint(OFF, "start_vm starts it")

# keyed by op, or op+variant when a parameter changes the target state
RULES: dict[str, Rule] = {
    "define_vm": Rule(NO_STATE, DEFINED | {UNDEFINED}),  # never refused: a definition replaces one
    "start_vm": Rule(RUNNING, OFF, _START),
    "start_vm+paused": Rule(PAUSED, OFF, _START_PAUSED),
    "start_vm+spec": Rule(RUNNING, OFF | {UNDEFINED}, _START),
    "start_vm+spec+paused": Rule(PAUSED, OFF | {UNDEFINED}, _START_PAUSED),
    "shutdown_vm": Rule(OFF, RUNNING | PAUSED | {"shutdown"}, _hint(OTHER, "destroy_vm stops it")),
    "destroy_vm": Rule(OFF, ACTIVE),
    "reboot_vm": Rule(NO_STATE, RUNNING, _START_IT | _START),
    "pause_vm": Rule(PAUSED, RUNNING, _hint(OFF, "start_vm with params.paused starts it paused")),
    "resume_vm": Rule(RUNNING, PAUSED, _START_IT),
    "undefine_vm": Rule(
        frozenset({UNDEFINED}), OFF, _hint(ACTIVE, "set params.destroy to stop it first")
    ),
    "undefine_vm+destroy": Rule(frozenset({UNDEFINED}), DEFINED),
    # off with its state file at the path is a noop too: the handler's `done` says so
    "hibernate_vm": Rule(NO_STATE, RUNNING | PAUSED, _hint(OFF, "it has no memory to save")),
    "dehibernate_vm": Rule(RUNNING, OFF | {UNDEFINED}, _START),
    "set_ticket": Rule(NO_STATE, LIVE, _hint(OFF, "only a running VM has a display")),
    **{op: _DEVICE for op in DEVICE_OPS},
    # its `done` says whether it already happened (gone from here, running on the destination)
    "migrate_vm": Rule(NO_STATE, LIVE, _START_IT),
}
LIVE_HINT = "a VM that is not running has only its persistent definition to change"


def rule_key(op: Any, launch_flags: int | None = None) -> str:
    """The RULES key for an operation message; a start's `launch_flags` (as its before_* hooks
    left them, None before they ran) decide whether it starts paused, over `params.paused`."""
    key: str = op.op
    params = op.params
    if key == "start_vm":
        paused = (
            params.paused
            if launch_flags is None
            else bool(launch_flags & libvirt.VIR_DOMAIN_START_PAUSED)
        )
        key += "+spec" if hasattr(op.vm, "vcpus") else ""
        key += "+paused" if paused else ""
    elif key == "undefine_vm" and params.destroy:
        key += "+destroy"
    return key


def wants_live(op: Any) -> bool:
    """A device op that must change the live domain: `live: true`, or `persistent: false` with
    `live` unset (the live domain is then all it asks to change)."""
    p = op.params
    return op.op in DEVICE_OPS and (p.live is True or (p.live is None and not p.persistent))


def require_state(ctx: Ctx[OpMessage], state: str | None = None) -> bool:
    """True when the op's effect is already there, False when it should run; raises
    `no_domain` or `bad_state` when the VM's state (`state`, else looked up) does not allow it."""
    rule = RULES[rule_key(ctx.op, ctx.launch_flags)]
    found = ctx.state() if state is None else state
    if found in rule.already:
        return True
    if found in rule.acts_from:
        if found not in LIVE and wants_live(ctx.op):
            raise bad_state(ctx, found, LIVE, LIVE_HINT)
        return False
    if found == UNDEFINED:
        raise OpError(
            "no_domain",
            f"no domain with uuid {ctx.uuid} on this host",
            "libvirt",
            libvirt_code=libvirt.VIR_ERR_NO_DOMAIN,
            details=_found(found, rule.acts_from),
        )
    raise bad_state(ctx, found, rule.acts_from, rule.hints.get(found, ""))


def bad_state(
    ctx: Ctx[OpMessage], found: str, acts_from: frozenset[str], hint: str = ""
) -> OpError:
    """The error for an op the VM's state does not allow; libvirt would answer it the same way."""
    where = ", ".join(sorted(acts_from)) or "no state"
    tail = f"; {hint}" if hint else ""
    return OpError(
        "bad_state",
        f"{ctx.op.op} cannot act on a {found} VM (only on: {where}){tail}",
        "libvirt",
        libvirt_code=libvirt.VIR_ERR_OPERATION_INVALID,
        details=_found(found, acts_from),
    )


def _found(found: str, acts_from: frozenset[str]) -> dict[str, Any]:
    return {"state": found, "allowed": sorted(acts_from)}
