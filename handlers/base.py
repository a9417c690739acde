"""What a handler is, the context it runs in, and the registry of handlers by op."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from handlers.errors import OpError

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
UNDEFINED = "undefined"


def domain_state(dom: libvirt.virDomain | None) -> str:
    """A domain's state as a word; `undefined` when there is no domain."""
    if dom is None:
        return UNDEFINED
    try:
        return STATE_NAMES.get(dom.state()[0], "unknown")
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return UNDEFINED
        raise


@dataclass
class Ctx:
    """What one operation runs with: the libvirt connection, the op message, host policies."""

    conn: libvirt.virConnect
    op: Any
    storage_roots: Sequence[Path] | None = None
    allow_raw_xml: bool = False
    notes: dict[str, Any] = field(default_factory=dict)  # handler -> event data (e.g. noop)
    cache: dict[str, Any] = field(default_factory=dict)  # handler's own, for this one run

    @property
    def uuid(self) -> str:
        return str(self.op.vm.uuid)

    def find(self) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByUUIDString(self.uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def domain(self) -> libvirt.virDomain:
        dom = self.find()
        if dom is None:
            raise OpError(
                "no_domain",
                f"no domain with uuid {self.uuid} on this host",
                "libvirt",
                libvirt_code=libvirt.VIR_ERR_NO_DOMAIN,
            )
        return dom

    def state(self) -> str:
        return domain_state(self.find())

    def current_xml(self, inactive: bool = False) -> str:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return str(self.domain().XMLDesc(flags))


@dataclass(frozen=True)
class Handler:
    """One operation, in the three steps the runner wraps with hooks and retries.

    - `prepare(ctx) -> payload`: the XML the `before_<point>` chain sees (domain or device XML);
    - `execute(ctx, payload)`: the libvirt call, with the payload as the chain left it;
      retried by the runner when it raises a transient error, so it must be safe to repeat;
    - `done(ctx) -> bool`: whether the op's effect is already there (a no-op, or a request
      recovered after a crash that needs no new run).
    """

    op: str
    point: str
    prepare: Callable[[Ctx], str]
    execute: Callable[[Ctx, str], None]
    done: Callable[[Ctx], bool] = lambda ctx: False
    device: bool = False


HANDLERS: dict[str, Handler] = {}


def register(handler: Handler) -> Handler:
    HANDLERS[handler.op] = handler
    return handler
