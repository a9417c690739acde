"""Lifecycle operations: define, start, shutdown, destroy, reboot, pause, resume, undefine.

Each acts on the domain by uuid. Asking for a state the domain is already in is a success (the
handler's `done` says so and the runner reports a no-op), never an error.
"""

from __future__ import annotations

import time

import libvirt

from handlers.base import Ctx, Handler, register
from handlers.domxml import build_domain_xml
from handlers.errors import OpError

RUNNING = {"running", "blocked"}


def _spec_xml(ctx: Ctx) -> str:
    """The spec's domain XML, built once per run (prepare and execute both need it)."""
    xml = ctx.cache.get("spec_xml")
    if xml is None:
        xml = ctx.cache["spec_xml"] = build_domain_xml(
            ctx.op.vm, storage_roots=ctx.storage_roots, allow_raw=ctx.allow_raw_xml
        )
    return str(xml)


def _has_spec(ctx: Ctx) -> bool:
    return hasattr(ctx.op.vm, "vcpus")


# -- define ----------------------------------------------------------------------------
def _define(ctx: Ctx, xml: str) -> None:
    ctx.conn.defineXML(xml)


register(Handler("define_vm", "vm_define", prepare=_spec_xml, execute=_define))


# -- start -----------------------------------------------------------------------------
def _start_prepare(ctx: Ctx) -> str:
    if _has_spec(ctx):
        return _spec_xml(ctx)
    return ctx.current_xml(inactive=True)


def _start(ctx: Ctx, xml: str) -> None:
    # the persistent definition is the spec; hook edits apply to this run only (as in VDSM)
    if _has_spec(ctx):
        ctx.conn.defineXML(_spec_xml(ctx))
    elif ctx.find() is None:
        ctx.domain()  # raises no_domain
    if not ctx.op.params.paused:
        ctx.conn.createXML(xml, 0)
        return
    try:
        ctx.conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
            raise
        ctx.conn.createXML(xml, 0).suspend()  # drivers without the flag (the test driver)


def _start_done(ctx: Ctx) -> bool:
    return ctx.state() in RUNNING | {"paused"}


register(Handler("start_vm", "vm_start", prepare=_start_prepare, execute=_start, done=_start_done))


# -- shutdown / destroy ------------------------------------------------------------------
def _domain_xml(ctx: Ctx) -> str:
    return ctx.current_xml()


def _is_off(ctx: Ctx) -> bool:
    return ctx.state() in {"shutoff", "crashed"}


def _shutdown(ctx: Ctx, _xml: str) -> None:
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


def _shutdown_done(ctx: Ctx) -> bool:
    ctx.domain()
    return _is_off(ctx)


register(
    Handler(
        "shutdown_vm", "vm_shutdown", prepare=_domain_xml, execute=_shutdown, done=_shutdown_done
    )
)


def _destroy(ctx: Ctx, _xml: str) -> None:
    dom = ctx.domain()
    if not _is_off(ctx):
        dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL if ctx.op.params.graceful else 0)


register(
    Handler("destroy_vm", "vm_destroy", prepare=_domain_xml, execute=_destroy, done=_shutdown_done)
)


# -- reboot ----------------------------------------------------------------------------
def _reboot(ctx: Ctx, _xml: str) -> None:
    dom = ctx.domain()
    if ctx.state() not in RUNNING:
        raise OpError(
            "not_running",
            f"cannot reboot a {ctx.state()} domain",
            "libvirt",
            libvirt_code=libvirt.VIR_ERR_OPERATION_INVALID,
        )
    dom.reboot(0)


register(Handler("reboot_vm", "vm_reboot", prepare=_domain_xml, execute=_reboot))


# -- pause / resume --------------------------------------------------------------------
def _pause(ctx: Ctx, _xml: str) -> None:
    if ctx.state() != "paused":
        ctx.domain().suspend()


def _paused(ctx: Ctx) -> bool:
    ctx.domain()
    return ctx.state() == "paused"


register(Handler("pause_vm", "vm_pause", prepare=_domain_xml, execute=_pause, done=_paused))


def _resume(ctx: Ctx, _xml: str) -> None:
    if ctx.state() == "paused":
        ctx.domain().resume()


def _running(ctx: Ctx) -> bool:
    ctx.domain()
    return ctx.state() in RUNNING


register(Handler("resume_vm", "vm_cont", prepare=_domain_xml, execute=_resume, done=_running))


# -- undefine --------------------------------------------------------------------------
def _undefine_prepare(ctx: Ctx) -> str:
    return ctx.current_xml(inactive=True)


def _undefine(ctx: Ctx, _xml: str) -> None:
    dom = ctx.find()
    if dom is None:
        return
    if not _is_off(ctx):
        if not ctx.op.params.destroy:
            raise OpError(
                "running",
                "domain is running; set params.destroy to stop it first",
                "libvirt",
                libvirt_code=libvirt.VIR_ERR_OPERATION_INVALID,
            )
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


register(
    Handler(
        "undefine_vm",
        "vm_undefine",
        prepare=_undefine_prepare,
        execute=_undefine,
        done=lambda ctx: ctx.find() is None,
    )
)
