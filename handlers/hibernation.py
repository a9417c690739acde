"""Hibernation: save a running VM's memory to a state file and stop it (`hibernate_vm`, VDSM's
`vm_hibernate`); restore it from that file (`dehibernate_vm`, `vm_dehibernate`), which removes
the file once the VM runs again.

The state file is `params.path`, checked like a disk path (under a storage root when roots are
configured), else `<first storage root>/<uuid>.save`. A file is a state file of this VM when
libvirt reads its header (`saveImageGetXMLDesc`) and the domain in it has this VM's uuid;
libvirt marks an image complete only once the whole save is written, so a save cut short by a
crash is never taken for one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

import libvirt
from lxml import etree
from pydantic import Field

from handlers.base import UNDEFINED, Ctx, Operation, declare
from handlers.errors import OpError, validation
from handlers.libvirt_errors import is_connection_error
from handlers.message import OpMessage, Strict
from handlers.states import OFF, require_state
from handlers.storage import check_path_under_roots

# libvirt's QEMU driver writes this magic first and the complete one last
PARTIAL_MAGIC = b"LibvirtQemudPart"
_NO_JOB = (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)
SAVE_WAIT_S = 600.0  # a save libvirt is still writing, waited for before it is judged


class StateFileParams(Strict):
    path: str | None = Field(
        None,
        description="the state file: absolute, under a storage root;"
        " unset: <first storage root>/<uuid>.save",
    )


class HibernateVm(OpMessage):
    op: Literal["hibernate_vm"]
    params: StateFileParams = Field(default_factory=StateFileParams)  # type: ignore[assignment]


class DehibernateVm(OpMessage):
    op: Literal["dehibernate_vm"]
    params: StateFileParams = Field(default_factory=StateFileParams)  # type: ignore[assignment]


def state_path(ctx: Ctx[HibernateVm | DehibernateVm]) -> str:
    """The state file of this request: `params.path` checked like a disk path, or derived
    from the first storage root and the VM's uuid."""
    path = ctx.op.params.path
    roots = ctx.storage_roots
    if path is None:
        if not roots:
            raise validation(
                "params.path: no storage root is configured to keep the state file under;"
                " give params.path",
                "no_state_path",
                field="params.path",
            )
        return str(Path(roots[0]) / f"{ctx.uuid}.save")
    # without configured roots a path is still absolute and free of `..`, as a disk path is
    return str(check_path_under_roots(path, roots or ["/"], field="params.path"))


def image_xml(ctx: Ctx[OpMessage], path: str) -> str | None:
    """The domain XML in the complete state file at `path`; None when there is no such file
    or libvirt does not read it as one."""
    if not os.path.isfile(path):
        return None
    try:
        return str(ctx.conn.saveImageGetXMLDesc(path, 0))
    except libvirt.libvirtError as exc:
        if is_connection_error(exc):
            raise  # retried: the file may be fine
        return None


def _uuid_of(xml: str | None) -> str | None:
    if xml is None:
        return None
    try:
        found = etree.fromstring(xml.encode()).findtext("uuid")
    except etree.XMLSyntaxError:
        return None
    return found.strip().lower() if found else None


def holds_this_vm(ctx: Ctx[OpMessage], path: str) -> bool:
    return _uuid_of(image_xml(ctx, path)) == ctx.uuid.lower()


def _partial(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(PARTIAL_MAGIC)) == PARTIAL_MAGIC
    except OSError:
        return False


# -- hibernate -------------------------------------------------------------------------
def _await_save(ctx: Ctx[HibernateVm]) -> None:
    """Wait out a save libvirt is still writing: its request's worker died in the call, and
    libvirtd goes on without it. Ends when the save did, whichever way."""
    deadline = time.monotonic() + SAVE_WAIT_S
    while (dom := ctx.find()) is not None:
        try:
            job = dom.jobStats()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in _NO_JOB:
                return  # a driver without jobs (the test driver), a VM off or gone (saved)
            raise
        saving = job.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_SAVE
        if job.get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE or not saving:
            return
        if time.monotonic() > deadline:
            raise OpError(
                "save_in_progress",
                f"libvirt has been saving this VM for over {SAVE_WAIT_S:g}s",
                "timeout",
                transient=True,
            )
        time.sleep(0.2)


def _saved(ctx: Ctx[HibernateVm]) -> bool:
    """Hibernated already: the VM is off (or gone, if it was transient) and its state file
    is at the path; once any save libvirt is still writing has ended."""
    _await_save(ctx)
    if ctx.state() not in OFF | {UNDEFINED}:
        return False
    return holds_this_vm(ctx, state_path(ctx))


def _check_free(ctx: Ctx[HibernateVm], path: str) -> None:
    """A file at `path` is overwritten only if it is a stale state file of this VM or a save
    libvirt never finished; anything else there (a disk, another VM's memory) is refused."""
    if not os.path.lexists(path):
        return
    regular = os.path.isfile(path) and not os.path.islink(path)
    if regular and (_partial(path) or holds_this_vm(ctx, path)):
        return
    raise validation(
        f"params.path: {path!r} already holds something other than a state file of this VM",
        "path_in_use",
        field="params.path",
    )


def _hibernate_prepare(ctx: Ctx[HibernateVm]) -> str:
    require_state(ctx)  # the state check, before the before_* chain
    path = state_path(ctx)
    _check_free(ctx, path)
    ctx.notes["state_file"] = path
    return ctx.current_xml()


def _hibernate(ctx: Ctx[HibernateVm], _xml: str) -> None:
    # hook edits are not saved with the image (VDSM ignores before_vm_hibernate's output too)
    if _saved(ctx):  # got there while the before_* hooks ran
        ctx.notes["noop"] = True
        return
    require_state(ctx)
    path = state_path(ctx)
    _check_free(ctx, path)
    ctx.domain().save(path)


declare(
    Operation(
        HibernateVm,
        point="vm_hibernate",
        payload="domxml",
        expects=("paused", "resumed", "stopped"),
        prepare=_hibernate_prepare,
        execute=_hibernate,
        done=_saved,
    )
)


# -- dehibernate -----------------------------------------------------------------------
def _remove(ctx: Ctx[DehibernateVm], path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        ctx.notes["state_file_kept"] = f"{path}: {exc.strerror}"
        return
    ctx.notes["state_file_removed"] = True


def _restored(ctx: Ctx[DehibernateVm]) -> bool:
    """Running: where dehibernate takes the VM. A state file of this VM still at the path is
    stale then (restoring it would roll the guest's memory back under its disks): removed."""
    if not require_state(ctx):
        return False
    path = state_path(ctx)
    if holds_this_vm(ctx, path):
        ctx.notes["state_file"] = path
        _remove(ctx, path)
    return True


def _image(ctx: Ctx[DehibernateVm], path: str) -> str:
    xml = ctx.cache.get("image_xml")
    if xml is None:
        xml = image_xml(ctx, path)
        if xml is None:
            raise validation(
                f"params.path: no complete state file at {path!r} (hibernate_vm makes one)",
                "no_state_file",
                field="params.path",
            )
        if _uuid_of(xml) != ctx.uuid.lower():
            raise validation(
                f"params.path: the state file {path!r} holds another VM ({_uuid_of(xml)})",
                "wrong_state_file",
                field="params.path",
            )
        ctx.cache["image_xml"] = xml
    return str(xml)


def _dehibernate_prepare(ctx: Ctx[DehibernateVm]) -> str:
    require_state(ctx)  # the state check, before the before_* chain
    path = state_path(ctx)
    ctx.notes["state_file"] = path
    return _image(ctx, path)  # the domain as it will run, as VDSM's vm_dehibernate gets it


def _dehibernate(ctx: Ctx[DehibernateVm], xml: str) -> None:
    if _restored(ctx):  # got there while the before_* hooks ran
        ctx.notes["noop"] = True
        return
    path = state_path(ctx)
    # a hook's edit (a disk moved, say) goes to libvirt with the image, as in VDSM
    edited = xml if xml != _image(ctx, path) else None
    try:
        ctx.conn.restoreFlags(path, edited, libvirt.VIR_DOMAIN_SAVE_RUNNING)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG or edited is not None:
            raise
        ctx.conn.restore(path)  # drivers without the flag (the test driver)
        if ctx.state() == "paused":
            ctx.domain().resume()
    _remove(ctx, path)


declare(
    Operation(
        DehibernateVm,
        point="vm_dehibernate",
        payload="domxml",
        expects=("defined", "started", "resumed", "paused"),
        prepare=_dehibernate_prepare,
        execute=_dehibernate,
        done=_restored,
    )
)
