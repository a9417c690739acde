"""`set_ticket`: a running VM's display password, with a validity and what becomes of clients
already connected (VDSM's `setTicket`, hook point `vm_set_ticket`).

The password is a secret (`SecretStr`): hooks get the live domain XML as libvirt gives it
without its security info, so without any password, and never the password itself; the worker
scrubs it from everything it reports (docs/protocol.md, Secrets).
"""

from __future__ import annotations

import time
from typing import Literal

import libvirt
from lxml import etree
from pydantic import Field, SecretStr, field_validator

from handlers.base import Ctx, Operation, declare
from handlers.errors import OpError, validation
from handlers.message import OpMessage, Strict
from handlers.states import require_state

VNC_MAX = 8  # the VNC protocol reads no more of a password


class TicketParams(Strict):
    password: SecretStr = Field(
        min_length=1,
        max_length=256,
        description="printable ASCII; at most 8 characters for VNC. Never reported anywhere",
        json_schema_extra={"pattern": "^[ -~]*$"},  # what _printable checks, for the schema
    )
    valid_s: int = Field(
        120, ge=0, le=366 * 86400, description="seconds the password is valid; 0: no expiry"
    )
    connected: Literal["keep", "disconnect", "fail"] = Field(
        "disconnect",
        description="clients already connected (SPICE): keep them, disconnect them, or fail"
        " if there are any; VNC always keeps them",
    )
    graphics: Literal["vnc", "spice"] | None = Field(
        None, description="which display; unset: every VNC and SPICE display"
    )

    @field_validator("password")
    @classmethod
    def _printable(cls, v: SecretStr) -> SecretStr:
        if not all(" " <= c <= "~" for c in v.get_secret_value()):
            raise ValueError("the password must be printable ASCII")  # never echoes it
        return v


class SetTicket(OpMessage):
    op: Literal["set_ticket"]
    params: TicketParams  # type: ignore[assignment]


def _displays(ctx: Ctx[SetTicket]) -> list[etree._Element]:
    """The live domain's `<graphics>` elements the ticket is for."""
    tree = etree.fromstring(ctx.current_xml().encode())
    kinds = [ctx.op.params.graphics] if ctx.op.params.graphics else ["vnc", "spice"]
    found = [g for g in tree.iterfind("devices/graphics") if g.get("type") in kinds]
    if not found:
        raise OpError(
            "no_device",
            f"domain {ctx.uuid} has no {' or '.join(k.upper() for k in kinds)} display",
            "libvirt",
            libvirt_code=libvirt.VIR_ERR_DEVICE_MISSING,
        )
    return found


def _prepare(ctx: Ctx[SetTicket]) -> str:
    require_state(ctx)  # the state check, before the before_* chain
    displays = _displays(ctx)
    vnc = any(g.get("type") == "vnc" for g in displays)
    if vnc and len(ctx.op.params.password.get_secret_value()) > VNC_MAX:
        raise validation(
            f"params.password: VNC passwords have at most {VNC_MAX} characters",
            "password_too_long",
            field="params.password",
        )
    ctx.notes["graphics"] = [g.get("type") for g in displays]
    return ctx.current_xml()  # no password in it: libvirt keeps it out without security info


def _set_ticket(ctx: Ctx[SetTicket], _xml: str) -> None:
    # as in VDSM, the chain's edits are not applied: the ticket changes the display alone
    require_state(ctx)
    p = ctx.op.params
    valid_to = None
    if p.valid_s:
        valid_to = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + p.valid_s))
    dom = ctx.domain()
    for g in _displays(ctx):
        g.set("passwd", p.password.get_secret_value())
        if valid_to:
            g.set("passwdValidTo", valid_to)
        elif "passwdValidTo" in g.attrib:
            del g.attrib["passwdValidTo"]
        if g.get("type") == "spice" or p.connected == "keep":  # QEMU's VNC only keeps
            g.set("connected", p.connected)
        dom.updateDeviceFlags(etree.tostring(g, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    ctx.notes["valid_to"] = f"{valid_to}.000Z" if valid_to else None  # the events' time format


declare(
    Operation(
        SetTicket,
        point="vm_set_ticket",
        payload="domxml",
        expects=("defined",),
        prepare=_prepare,
        execute=_set_ticket,
    )
)
