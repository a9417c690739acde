"""Live migration between two hosts (docs/protocol.md, Migration): `migrate_vm` on the source,
`prepare_incoming` and `finish_incoming` (the destination's part, sent by the source's worker
through the broker) and `cancel_migration` (a control operation on the source).

The source's run: the destination's libvirt must answer (else `destination_unreachable`, before
anything is sent); the source's `before_vm_migrate_source` chain may edit the XML sent; the
destination's worker runs `before_vm_migrate_destination` on it (`prepare_incoming`, waited for
with a bound: a veto fails the migration with the hook's stderr); libvirt migrates (client
driven, `virDomainMigrate3`), polled once a second for progress, a cancel or the timeout; the
destination's worker is told the outcome (`finish_incoming`: its after chain).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from pathlib import PurePosixPath
from typing import Any, Literal
from xml.sax.saxutils import escape

import libvirt
from lxml import etree
from pydantic import ConfigDict, Field, model_validator

from handlers.base import Ctx, Operation, Peers, declare
from handlers.errors import OpError
from handlers.message import OpMessage, Strict
from handlers.spec import RuleError
from handlers.states import ACTIVE, require_state

# the XML is data from another host: no entities, no DTDs, no network
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
MIGRATIONS = "migrations"  # Ctx.shared key: VM uuid -> the cancel flag of its migration
PREPARE_TIMEOUT_S = 60.0  # the destination's worker answers prepare_incoming within this
# libvirt events a migration causes on the source (stopped/undefined) and on the destination
SOURCE_EXPECTS = ("stopped", "undefined", "paused", "resumed")
# (stopped/undefined: an incoming VM torn down by a migration that failed)
DESTINATION_EXPECTS = ("defined", "started", "resumed", "paused", "stopped", "undefined")


# -- messages --------------------------------------------------------------------------
class MigrateParams(Strict):
    destination: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="destination host id")
    destination_uri: str | None = Field(
        None, max_length=1024, description="its libvirt URI, instead of the peers table's"
    )
    migration_uri: str | None = Field(
        None, max_length=1024, description="where the migration stream goes (tcp://addr)"
    )
    live: bool = True
    auto_converge: bool = False
    postcopy: bool = False
    postcopy_after_s: float | None = Field(
        None, gt=0, le=86400, description="switch to post-copy after this long (with postcopy)"
    )
    bandwidth_mib_s: int | None = Field(None, ge=1, le=1_000_000)
    max_downtime_ms: int | None = Field(None, ge=1, le=600_000)
    timeout_s: float = Field(
        600.0, gt=0, le=86400, description="then abort (or switch to post-copy with postcopy)"
    )
    copy_storage: Literal["none", "all"] = "none"
    persist_destination: bool = True
    undefine_source: bool = True
    unsafe: bool = Field(
        False,
        description="the storage is shared though libvirt cannot tell (a filesystem it does"
        " not know as shared); libvirt refuses such a migration otherwise",
    )

    # a check across fields, which a JSON Schema cannot say: listed for control planes
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"x-rules": ["postcopy_after_s needs postcopy: true."]},
    )

    @model_validator(mode="after")
    def _postcopy_after_needs_postcopy(self) -> MigrateParams:
        if self.postcopy_after_s is not None and not self.postcopy:
            raise RuleError("postcopy_after_s needs postcopy: true")
        return self


class MigrateVm(OpMessage):
    op: Literal["migrate_vm"]
    params: MigrateParams  # type: ignore[assignment]

    def event_data(self) -> dict[str, Any]:
        return {"destination": self.params.destination}


class IncomingParams(Strict):
    source: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="source host id")
    copy_storage: Literal["none", "all"] = "none"
    migration_request: str = Field(max_length=200, description="the migrate_vm request id")
    xml: str = Field(max_length=1024 * 1024, description="the domain XML the source sends")
    hold_s: float = Field(660.0, gt=0, le=90000, description="how long the migration may last")


class PrepareIncoming(OpMessage):
    op: Literal["prepare_incoming"]
    params: IncomingParams  # type: ignore[assignment]


class FinishParams(Strict):
    source: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    migration_request: str = Field(max_length=200)
    ok: bool
    error: str | None = Field(None, max_length=4096)
    xml: str = Field("", max_length=1024 * 1024, description="the XML the destination accepted")


class FinishIncoming(OpMessage):
    op: Literal["finish_incoming"]
    params: FinishParams  # type: ignore[assignment]


class CancelMigration(OpMessage):
    op: Literal["cancel_migration"]


# -- migrate_vm (source) ----------------------------------------------------------------
def _peers(ctx: Ctx[Any]) -> Peers:
    if ctx.peers is None:
        raise OpError("internal", "this worker has no peers (migration unsupported)", "internal")
    return ctx.peers


def _source_xml(ctx: Ctx[MigrateVm]) -> str:
    require_state(ctx)  # before the before_* chain: a VM that does not run does not migrate
    dom = ctx.domain()
    state, reason = dom.state()
    if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
        dom.resume()  # left paused by a migration whose worker died before it was confirmed
        ctx.notes["resumed_source"] = True
    return str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))


def _wait_for_orphan_job(ctx: Ctx[MigrateVm]) -> None:
    """A migration whose worker died goes on in libvirtd without it: wait (up to the timeout)
    for it to end before deciding anything, so that one that completes is never run again."""
    dom = ctx.find()
    deadline = time.monotonic() + ctx.op.params.timeout_s
    while dom is not None and time.monotonic() < deadline:
        try:
            if dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
                return
        except libvirt.libvirtError:
            return  # gone: migrated, or undefined
        ctx.notes["waited_for_orphan_job"] = True
        time.sleep(0.5)


def _migrated(ctx: Ctx[MigrateVm]) -> bool:
    """Gone from here (or stopped) and running on the destination: the migration happened
    (a request recovered after the worker died in it, or sent again). A recovered one tells
    the destination (`finish_incoming`) in case the dead run did not: a second copy of it is
    a duplicate there, never a second run of its after chain."""
    _wait_for_orphan_job(ctx)
    if ctx.state() in ACTIVE:
        return False
    peers = _peers(ctx)
    try:
        dconn = peers.connect(ctx.op.params.destination, ctx.op.params.destination_uri)
    except OpError:
        return False
    try:
        moved = bool(dconn.lookupByUUIDString(ctx.uuid).isActive())
    except libvirt.libvirtError:
        return False
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dconn.close()
    # only this request's own later run: another request for a VM already moved moved nothing
    if moved and ctx.attempt > 1 and "destination_told" not in ctx.notes:
        ctx.notes["destination_told"] = _tell_destination(ctx, peers, "", True, "")
    return moved


def _prepare_on_destination(ctx: Ctx[MigrateVm], xml: str) -> str:
    """The destination's before chain on `xml` (its worker, through the broker); the XML it
    accepted, or OpError with its refusal."""
    p = ctx.op.params
    body = {
        "version": 1,
        "op": "prepare_incoming",
        "vm": {"uuid": ctx.uuid, "name": ctx.op.vm.name},
        "params": {
            "source": ctx.host,
            "migration_request": ctx.request_id,
            "xml": xml,
            "hold_s": p.timeout_s + PREPARE_TIMEOUT_S,
            "copy_storage": p.copy_storage,
        },
        "custom": ctx.op.custom,
    }
    data = _peers(ctx).call(
        p.destination,
        body,
        request_id=f"{ctx.request_id}.prepare",
        correlation_id=ctx.request_id,
        timeout=PREPARE_TIMEOUT_S,
    )
    if data.get("phase") != "after":
        err = data.get("error") or {}
        code = str(err.get("code") or "destination_failed")
        raise OpError(
            code if code in ("hook_failed", "bad_state") else "destination_failed",
            f"destination {p.destination}: {err.get('message', 'prepare_incoming failed')}",
            "hook" if code == "hook_failed" else "libvirt",
            hook=err.get("hook"),
            details={"stderr": err.get("stderr", ""), "destination_error": err},
        )
    if "accepted_xml" not in data:
        return xml
    if any(str(c).startswith("data.accepted_xml") for c in data.get("cut") or ()):
        raise OpError(
            "destination_failed",
            f"destination {p.destination}: the XML its hooks left is too long to hand back",
            "hook",
        )
    return str(data["accepted_xml"])


def _flags(p: MigrateParams, tls: bool = False) -> int:
    flags = libvirt.VIR_MIGRATE_TLS if tls else 0
    for on, flag in (
        (p.live, libvirt.VIR_MIGRATE_LIVE),
        (p.auto_converge, libvirt.VIR_MIGRATE_AUTO_CONVERGE),
        (p.postcopy, libvirt.VIR_MIGRATE_POSTCOPY),
        (p.copy_storage == "all", libvirt.VIR_MIGRATE_NON_SHARED_DISK),
        (p.persist_destination, libvirt.VIR_MIGRATE_PERSIST_DEST),
        (p.undefine_source, libvirt.VIR_MIGRATE_UNDEFINE_SOURCE),
        (p.unsafe, libvirt.VIR_MIGRATE_UNSAFE),
    ):
        if on:
            flags |= flag
    return flags


def _params(ctx: Ctx[MigrateVm], xml: str) -> dict[str, Any]:
    p = ctx.op.params
    out: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: xml}
    if p.persist_destination:
        out[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = xml
    uri = _peers(ctx).migration_uri(p.destination, p.migration_uri)
    if uri:
        out[libvirt.VIR_MIGRATE_PARAM_URI] = uri
        if p.copy_storage == "all":
            out[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] = uri
    if p.bandwidth_mib_s:
        out[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = p.bandwidth_mib_s
    return out


def progress_of(stats: dict[str, Any]) -> dict[str, Any]:
    """libvirt's job stats as the progress event's `data.progress` (memory and disks)."""

    def both(what: str) -> int:
        data = int(stats.get(f"data_{what}", 0))
        return data or int(stats.get(f"memory_{what}", 0)) + int(stats.get(f"disk_{what}", 0))

    total, processed, remaining = both("total"), both("processed"), both("remaining")
    # no `remaining` yet (a disk copy starting): what was processed says how far it is
    done = total - remaining if remaining else min(processed, total)
    return {
        "data_processed_bytes": processed,
        "data_remaining_bytes": remaining,
        "data_total_bytes": total,
        "bandwidth_mib_s": round(int(stats.get("memory_bps", 0)) / 1048576, 1),
        "dirty_rate_pages_s": int(stats.get("memory_dirty_rate", 0)),
        "iteration": int(stats.get("memory_iteration", 0)),
        "expected_downtime_ms": int(stats.get("downtime", 0)),
        "percent": round(100.0 * done / total, 1) if total else 0.0,
    }


def _migrate(ctx: Ctx[MigrateVm], xml: str) -> None:
    require_state(ctx)  # again: the VM may have stopped while the before_* hooks ran
    peers = _peers(ctx)
    cancel = threading.Event()  # reachable by cancel_migration from now on
    ctx.shared.setdefault(MIGRATIONS, {})[ctx.uuid] = cancel
    try:
        _migrate_to(ctx, peers, xml, cancel)
    finally:
        ctx.shared.get(MIGRATIONS, {}).pop(ctx.uuid, None)


def _migrate_to(ctx: Ctx[MigrateVm], peers: Peers, xml: str, cancel: threading.Event) -> None:
    p = ctx.op.params
    dconn = peers.connect(p.destination, p.destination_uri)  # fast and clear when it is down
    try:
        accepted = _prepare_on_destination(ctx, xml)
        ok, error = False, ""
        try:
            if cancel.is_set():  # while the destination prepared
                raise OpError("cancelled", "migration cancelled (cancel_migration)", "libvirt")
            _run(ctx, dconn, accepted, cancel)
            ok = True
        except OpError as exc:
            error = str(exc)
            raise
        finally:
            ctx.notes["destination_told"] = _tell_destination(ctx, peers, accepted, ok, error)
        ctx.notes["destination_state"] = "running"
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dconn.close()


def _tell_destination(
    ctx: Ctx[MigrateVm], peers: Peers, accepted: str, ok: bool, error: str
) -> bool:
    """finish_incoming to the destination; False when the broker failed (its claim on the VM
    then ends at its hold, and its after chain does not run): the migration's outcome stands."""
    try:
        peers.send(
            ctx.op.params.destination,
            {
                "version": 1,
                "op": "finish_incoming",
                "vm": {"uuid": ctx.uuid, "name": ctx.op.vm.name},
                "params": {
                    "source": ctx.host,
                    "migration_request": ctx.request_id,
                    "ok": ok,
                    "error": error[:4096] or None,
                    "xml": accepted,
                },
                "custom": ctx.op.custom,
            },
            request_id=f"{ctx.request_id}.finish",
            correlation_id=ctx.request_id,
        )
    except OpError:
        return False
    return True


def _run(ctx: Ctx[MigrateVm], dconn: libvirt.virConnect, xml: str, cancel: threading.Event) -> None:
    """virDomainMigrate3 on a thread of its own; this one polls it once a second (progress),
    and aborts it on a cancel or at the timeout (or switches it to post-copy)."""
    p = ctx.op.params
    dom = ctx.domain()
    if p.max_downtime_ms:
        dom.migrateSetMaxDowntime(p.max_downtime_ms, 0)
    failure: list[BaseException] = []

    def call() -> None:
        try:
            dom.migrate3(dconn, _params(ctx, xml), _flags(p, _peers(ctx).tls(p.destination)))
        except BaseException as exc:  # handed to the polling thread
            failure.append(exc)

    worker = threading.Thread(target=call, name="migrate", daemon=True)
    t0 = time.monotonic()
    why = ""  # set when we abort: cancelled or timeout
    postcopy = False
    next_progress = t0 + 1.0
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
        if not worker.is_alive():
            break
        now = time.monotonic()
        if cancel.is_set() and not why and not postcopy:  # post-copy cannot go back
            why = "cancelled"
            _abort(dom)
        elif now - t0 >= p.timeout_s and not why and not postcopy:
            if p.postcopy:
                postcopy = _postcopy(dom, ctx)
            else:
                why = "timeout"
                _abort(dom)
        elif p.postcopy_after_s and now - t0 >= p.postcopy_after_s and not postcopy:
            postcopy = _postcopy(dom, ctx)
        if now >= next_progress and not why:
            next_progress = now + 1.0
            with contextlib.suppress(libvirt.libvirtError):
                ctx.progress({"progress": progress_of(dom.jobStats())})
    if why == "cancelled":
        raise OpError("cancelled", "migration cancelled (cancel_migration)", "libvirt")
    if why == "timeout":
        raise OpError("timeout", f"migration not done in {p.timeout_s:g}s: aborted", "timeout")
    if failure:
        exc = failure[0]
        if isinstance(exc, libvirt.libvirtError):
            raise OpError(
                "migration_failed",
                f"migration to {p.destination} failed: {exc.get_error_message()}",
                "libvirt",
                libvirt_code=exc.get_error_code(),
            )
        raise exc
    ctx.notes["duration_migration_s"] = round(time.monotonic() - t0, 3)


def _abort(dom: libvirt.virDomain) -> None:
    with contextlib.suppress(libvirt.libvirtError):  # it may have just ended
        dom.abortJob()


def _postcopy(dom: libvirt.virDomain, ctx: Ctx[MigrateVm]) -> bool:
    """Switch to post-copy; False when libvirt cannot yet (still copying disks): tried again."""
    try:
        dom.migrateStartPostCopy(0)
    except libvirt.libvirtError:
        return False
    ctx.notes["postcopy"] = True
    return True


declare(
    Operation(
        MigrateVm,
        point="vm_migrate_source",
        payload="domxml",
        expects=SOURCE_EXPECTS,
        prepare=_source_xml,
        execute=_migrate,
        done=_migrated,
    )
)


# -- the destination's part -------------------------------------------------------------
def _incoming_xml(ctx: Ctx[PrepareIncoming]) -> str:
    if ctx.state() in ACTIVE:
        raise OpError(
            "bad_state",
            f"a domain with uuid {ctx.uuid} already runs on this host",
            "libvirt",
            libvirt_code=libvirt.VIR_ERR_OPERATION_INVALID,
            details={"state": ctx.state(), "allowed": ["shutoff", "crashed", "undefined"]},
        )
    return ctx.op.params.xml


def _accept(ctx: Ctx[PrepareIncoming], xml: str) -> None:
    if ctx.op.params.copy_storage == "all":
        ctx.notes["storage_pools"] = _pools_for_disks(ctx.conn, xml)
    # the source sends what the chain left; handed back only when it changed (events are small)
    if xml != ctx.op.params.xml:
        ctx.notes["accepted_xml"] = xml
    ctx.notes["source"] = ctx.op.params.source
    ctx.notes["migration_request"] = ctx.op.params.migration_request


def _pools_for_disks(conn: libvirt.virConnect, xml: str) -> list[str]:
    """libvirt creates the local disks a migration copies only in a storage pool: one for
    each file disk's directory that has none (transient, so nothing outlives the daemon)."""
    made = []
    root = etree.fromstring(xml.encode(), _PARSER)
    for source in root.iterfind("devices/disk[@type='file']/source"):
        where = str(PurePosixPath(source.get("file", "/")).parent)
        try:
            conn.storagePoolLookupByTargetPath(where)
            continue
        except libvirt.libvirtError:
            pass
        name = "vmworker-" + hashlib.sha256(where.encode()).hexdigest()[:12]
        pool = (
            f"<pool type='dir'><name>{name}</name>"
            f"<target><path>{escape(where)}</path></target></pool>"
        )
        try:
            conn.storagePoolCreateXML(pool, libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD)
            made.append(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_FAILED:  # made meanwhile
                raise
    return made


declare(
    Operation(
        PrepareIncoming,
        point="vm_migrate_destination",
        payload="domxml",
        expects=DESTINATION_EXPECTS,
        prepare=_incoming_xml,
        execute=_accept,
        devices="device_migrate_destination",
        chains=("before",),
    )
)


def _arrived_xml(ctx: Ctx[FinishIncoming]) -> str:
    if ctx.op.params.ok and ctx.state() in ACTIVE:
        return ctx.current_xml()
    return ctx.op.params.xml or f"<domain><uuid>{ctx.uuid}</uuid></domain>"


def _finish(ctx: Ctx[FinishIncoming], _xml: str) -> None:
    p = ctx.op.params
    ctx.notes["source"] = p.source
    ctx.notes["migration_request"] = p.migration_request
    if not p.ok:
        raise OpError(
            "migration_failed", f"the migration from {p.source} failed: {p.error}", "libvirt"
        )
    if ctx.state() not in ACTIVE:
        raise OpError(
            "no_domain",
            f"the migration from {p.source} ended but the VM does not run here",
            "libvirt",
        )


declare(
    Operation(
        FinishIncoming,
        point="vm_migrate_destination",
        payload="domxml",
        expects=DESTINATION_EXPECTS,
        prepare=_arrived_xml,
        execute=_finish,
        devices="device_migrate_destination",
        chains=("after", "after_fail"),
    )
)


# -- cancel_migration (source, control) --------------------------------------------------
def _cancel(ctx: Ctx[CancelMigration], _xml: str) -> None:
    flag = ctx.shared.get(MIGRATIONS, {}).get(ctx.uuid)
    if flag is None:
        raise OpError(
            "no_migration",
            f"no migration of VM {ctx.uuid} is running on this host",
            "libvirt",
            details={"state": ctx.state()},
        )
    flag.set()
    ctx.notes["cancel_requested"] = True


declare(
    Operation(
        CancelMigration,
        point="vm_migrate_source",
        payload="domxml",
        expects=SOURCE_EXPECTS,
        prepare=lambda ctx: "",
        execute=_cancel,
        chains=(),
        control=True,
    )
)
