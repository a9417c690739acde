"""Lifecycle operations: define, start, shutdown, destroy, reboot, pause, resume, undefine.

Each is declared here once (`declare(Operation(...))`: its message model, hook point, payload and
the lifecycle events it causes) next to its functions, and acts on the domain by uuid. Which
states each acts from is handlers/states.py's table: asking for a state the domain is already in
is a success (the handler's `done` says so and the runner reports a no-op); asking from a state
the op cannot act from fails with `bad_state` before any `before_*` hook runs, and is checked
again just before the libvirt call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import libvirt
from pydantic import Field

from handlers.base import Ctx, M, Operation, declare
from handlers.domxml import build_domain_xml
from handlers.errors import OpError
from handlers.message import OpMessage, Strict, VmRefOrSpec
from handlers.spec import VmSpec
from handlers.states import require_state


# -- messages --------------------------------------------------------------------------
class StartParams(Strict):
    paused: bool = Field(False, description="start with the CPUs paused")


class ShutdownParams(Strict):
    timeout: float = Field(60.0, gt=0, le=3600, description="seconds to wait for the guest")
    force: bool = Field(
        False, description="destroy the domain if it is still running after timeout"
    )


class DestroyParams(Strict):
    graceful: bool = Field(False, description="SIGTERM QEMU only, never SIGKILL")


class UndefineParams(Strict):
    keep_nvram: bool = False
    destroy: bool = Field(False, description="destroy a running domain first")


class DefineVm(OpMessage):
    op: Literal["define_vm"]
    vm: VmSpec  # type: ignore[assignment]


class StartVm(OpMessage):
    op: Literal["start_vm"]
    vm: VmRefOrSpec  # type: ignore[assignment]
    params: StartParams = Field(default_factory=StartParams)  # type: ignore[assignment]


class ShutdownVm(OpMessage):
    op: Literal["shutdown_vm"]
    params: ShutdownParams = Field(default_factory=ShutdownParams)  # type: ignore[assignment]


class DestroyVm(OpMessage):
    op: Literal["destroy_vm"]
    params: DestroyParams = Field(default_factory=DestroyParams)  # type: ignore[assignment]


class RebootVm(OpMessage):
    op: Literal["reboot_vm"]


class PauseVm(OpMessage):
    op: Literal["pause_vm"]


class ResumeVm(OpMessage):
    op: Literal["resume_vm"]


class UndefineVm(OpMessage):
    op: Literal["undefine_vm"]
    params: UndefineParams = Field(default_factory=UndefineParams)  # type: ignore[assignment]


def _spec_xml(ctx: Ctx[DefineVm | StartVm]) -> str:
    """The spec's domain XML, built once per run (prepare and execute both need it)."""
    xml = ctx.cache.get("spec_xml")
    if xml is None:
        assert isinstance(ctx.op.vm, VmSpec)  # callers check _has_spec first
        xml = ctx.cache["spec_xml"] = build_domain_xml(
            ctx.op.vm, storage_roots=ctx.storage_roots, allow_raw=ctx.allow_raw_xml
        )
    return str(xml)


def _has_spec(ctx: Ctx[DefineVm | StartVm]) -> bool:
    return isinstance(ctx.op.vm, VmSpec)


# -- define ----------------------------------------------------------------------------
def _define(ctx: Ctx[DefineVm], xml: str) -> None:
    ctx.conn.defineXML(xml)


declare(
    Operation(
        DefineVm,
        point="vm_define",
        payload="domxml",
        expects=("defined",),
        prepare=_spec_xml,
        execute=_define,
        devices="device_create",
    )
)


# -- start -----------------------------------------------------------------------------
def _start_prepare(ctx: Ctx[StartVm]) -> str:
    if _has_spec(ctx):
        return _spec_xml(ctx)
    return ctx.current_xml(inactive=True)


# virDomainCreateFlags, the flags createWithFlags takes; a hook may set any of them
START_FLAGS = {
    name: getattr(libvirt, name)
    for name in (
        "VIR_DOMAIN_START_PAUSED",
        "VIR_DOMAIN_START_AUTODESTROY",
        "VIR_DOMAIN_START_BYPASS_CACHE",
        "VIR_DOMAIN_START_FORCE_BOOT",
        "VIR_DOMAIN_START_VALIDATE",
        "VIR_DOMAIN_START_RESET_NVRAM",
    )
    if hasattr(libvirt, name)
}
# about restoring a managed-save image, which a start from XML never does (it boots, as
# FORCE_BOOT asks): accepted, not passed (createXML refuses them)
_RESTORE_ONLY = libvirt.VIR_DOMAIN_START_BYPASS_CACHE | libvirt.VIR_DOMAIN_START_FORCE_BOOT


def _launch_flags(ctx: Ctx[StartVm]) -> int:
    """The start flags vmworker would use: what the hooks' launch-flags file starts with."""
    return libvirt.VIR_DOMAIN_START_PAUSED if ctx.op.params.paused else 0


def start_flags(flags: int) -> int:
    """`flags` (a hook's launch flags) checked against createWithFlags' own: the flags to pass
    to createXML; `validation/bad_launch_flags` for a bit libvirt does not define."""
    known = 0
    for value in START_FLAGS.values():
        known |= value
    if flags < 0 or flags & ~known:
        names = ", ".join(f"{n} ({v})" for n, v in START_FLAGS.items())
        raise OpError(
            "bad_launch_flags",
            f"launch flags {flags} (left by the before_vm_start hooks) have bits libvirt's"
            f" createWithFlags does not take; it takes {names}",
            "validation",
        )
    return flags & ~_RESTORE_ONLY


def _arrived(ctx: Ctx[OpMessage]) -> bool:
    """Whether the VM got to the state the op asks for while the before_* hooks ran: the run
    is then a no-op (and noted as one)."""
    if require_state(ctx):
        ctx.notes["noop"] = True
        return True
    return False


def _start(ctx: Ctx[StartVm], xml: str) -> None:
    flags = start_flags(_launch_flags(ctx) if ctx.launch_flags is None else ctx.launch_flags)
    if _arrived(ctx):
        return
    # the persistent definition is the spec; hook edits apply to this run only (as in VDSM)
    if _has_spec(ctx):
        ctx.conn.defineXML(_spec_xml(ctx))
    elif ctx.find() is None:
        ctx.domain()  # raises no_domain
    paused = libvirt.VIR_DOMAIN_START_PAUSED
    try:
        ctx.conn.createXML(xml, flags)
    except libvirt.libvirtError as exc:
        if not flags & paused or exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
            raise
        ctx.conn.createXML(xml, flags & ~paused).suspend()  # drivers without the flag (test)


declare(
    Operation(
        StartVm,
        point="vm_start",
        payload="domxml",
        expects=("defined", "started", "resumed", "paused"),
        prepare=_start_prepare,
        execute=_start,
        done=require_state,
        devices="device_create",
        launch_flags=_launch_flags,
    )
)


# -- shutdown / destroy ------------------------------------------------------------------
def _domain_xml(ctx: Ctx[OpMessage]) -> str:
    require_state(ctx)  # before the before_* chain: no hook prepares for what cannot run
    return ctx.current_xml()


def _is_off(ctx: Ctx[OpMessage]) -> bool:
    return ctx.state() in {"shutoff", "crashed"}


def _shutdown(ctx: Ctx[ShutdownVm], _xml: str) -> None:
    if _arrived(ctx):
        return
    dom = ctx.domain()
    if ctx.state() == "paused":
        dom.resume()  # a paused guest cannot see the ACPI button
    dom.shutdown()
    deadline = time.monotonic() + ctx.op.params.timeout
    while time.monotonic() < deadline:
        if _is_off(ctx):
            return
        time.sleep(0.2)
    if ctx.op.params.force:
        ctx.notes["forced"] = True
        if not _is_off(ctx):
            dom.destroy()
        return
    raise OpError(
        "shutdown_timeout",
        f"guest still {ctx.state()} {ctx.op.params.timeout:g}s after the ACPI shutdown request"
        " (set params.force to destroy it)",
        "timeout",
    )


declare(
    Operation(
        ShutdownVm,
        point="vm_shutdown",
        payload="domxml",
        expects=("shutdown", "stopped"),
        prepare=_domain_xml,
        execute=_shutdown,
        done=require_state,
    )
)


def _destroy(ctx: Ctx[DestroyVm], _xml: str) -> None:
    if _arrived(ctx):
        return
    flags = libvirt.VIR_DOMAIN_DESTROY_GRACEFUL if ctx.op.params.graceful else 0
    ctx.domain().destroyFlags(flags)


declare(
    Operation(
        DestroyVm,
        point="vm_destroy",
        payload="domxml",
        expects=("shutdown", "stopped"),
        prepare=_domain_xml,
        execute=_destroy,
        done=require_state,
        devices="device_destroy",
    )
)


# -- reboot ----------------------------------------------------------------------------
def _reboot(ctx: Ctx[RebootVm], _xml: str) -> None:
    require_state(ctx)
    ctx.domain().reboot(0)


declare(
    Operation(
        RebootVm,
        point="vm_reboot",
        payload="domxml",
        expects=("shutdown", "stopped", "started", "resumed", "paused"),
        prepare=_domain_xml,
        execute=_reboot,
    )
)


# -- pause / resume --------------------------------------------------------------------
def _declare_cpu_switch(
    message: type[M], point: str, expects: str, act: Callable[[libvirt.virDomain], object]
) -> Operation[M]:
    """Pause or resume: `act` on the domain (`suspend`, `resume`) unless the domain got to the
    state it asks for while the before_* hooks ran (a no-op); done when it is already there."""

    def execute(ctx: Ctx[M], _xml: str) -> None:
        if _arrived(ctx):
            return
        act(ctx.domain())

    return declare(
        Operation(
            message,
            point=point,
            payload="domxml",
            expects=(expects,),
            prepare=_domain_xml,
            execute=execute,
            done=require_state,
        )
    )


_declare_cpu_switch(PauseVm, "vm_pause", "paused", libvirt.virDomain.suspend)
_declare_cpu_switch(ResumeVm, "vm_cont", "resumed", libvirt.virDomain.resume)


# -- undefine --------------------------------------------------------------------------
def _undefine_prepare(ctx: Ctx[UndefineVm]) -> str:
    require_state(ctx)  # a running VM without params.destroy: before the before_* chain
    return ctx.current_xml(inactive=True)


def _undefine(ctx: Ctx[UndefineVm], _xml: str) -> None:
    dom = ctx.find()
    if dom is None or require_state(ctx):
        ctx.notes["noop"] = True
        return
    if not _is_off(ctx):  # require_state let it through: params.destroy is set
        dom.destroy()
    flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    if "<nvram" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE):
        flags |= (
            libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
            if ctx.op.params.keep_nvram
            else libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        )
    try:
        dom.undefineFlags(flags)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
        dom.undefine()  # drivers without flag support (the test driver)


declare(
    Operation(
        UndefineVm,
        point="vm_undefine",
        payload="domxml",
        expects=("undefined", "shutdown", "stopped"),
        prepare=_undefine_prepare,
        execute=_undefine,
        done=lambda ctx: ctx.find() is None,
        devices="device_destroy",
    )
)
