"""What an operation is (one `Operation` declaration), the context it runs in, and the registry
of declarations by op name."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import libvirt

from handlers.errors import OpError
from handlers.message import OpMessage

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


class Peers(Protocol):
    """Other hosts, as an operation that spans two of them sees them (worker/peers.py): their
    libvirt, and their workers through the broker (a handler knows no AMQP)."""

    def connect(self, host: str, uri: str | None = None) -> libvirt.virConnect:
        """A libvirt connection to `host` (its URI from the peers table unless `uri`)."""
        ...

    def migration_uri(self, host: str, uri: str | None = None) -> str | None:
        """The address the migration stream goes to (None: libvirt's choice)."""
        ...

    def tls(self, host: str) -> bool:
        """Whether the migration stream to `host` is encrypted (QEMU's native TLS)."""
        ...

    def call(
        self,
        host: str,
        body: dict[str, Any],
        *,
        request_id: str,
        correlation_id: str | None,
        timeout: float,
    ) -> dict[str, Any]:
        """Publish operation `body` to `host`'s queue and return the data of its terminal event
        (`phase` after or fail); OpError `destination_unreachable` if none comes in `timeout`."""
        ...

    def send(
        self, host: str, body: dict[str, Any], *, request_id: str, correlation_id: str | None
    ) -> None:
        """Publish operation `body` to `host`'s queue, not waiting for its outcome."""
        ...


M = TypeVar("M", bound=OpMessage)
M_co = TypeVar("M_co", bound=OpMessage, covariant=True)


@dataclass
class Ctx(Generic[M_co]):
    """What one operation runs with: the libvirt connection, the op message, host policies.

    Typed by the op's model (`Ctx[SetVcpus]`), so mypy checks `ctx.op.params.count`; a helper
    shared by several ops takes a common base (`Ctx[OpMessage]`).
    """

    conn: libvirt.virConnect
    op: M_co
    storage_roots: Sequence[Path] | None = None
    allow_raw_xml: bool = False
    notes: dict[str, Any] = field(default_factory=dict)  # handler -> event data (e.g. noop)
    cache: dict[str, Any] = field(default_factory=dict)  # handler's own, for this one run
    host: str = ""  # this host's id
    request_id: str = ""
    attempt: int = 1  # which run of this request here: 2 and up after the worker died in one
    peers: Peers | None = None
    # a non-terminal event of this run (`<host>.<op>.progress`), data as given
    progress: Callable[[dict[str, Any]], None] = lambda _data: None
    # the worker's own, shared by every run (e.g. the migrations a cancel can reach)
    shared: dict[str, Any] = field(default_factory=dict)
    # libvirt start flags as the before_* hooks left them (an op declaring `launch_flags`)
    launch_flags: int | None = None

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


# What the hook chains of an operation receive: the whole domain's XML, or one device's.
Payload = Literal["domxml", "devicexml"]


def _never_done(ctx: Ctx[OpMessage]) -> bool:
    return False


def _no_device_custom(op: OpMessage) -> Mapping[str, str]:
    return {}


Chain = Literal["before", "after", "after_fail"]
ALL_CHAINS: tuple[Chain, ...] = ("before", "after", "after_fail")


@dataclass(frozen=True)
class Operation(Generic[M]):
    """One operation, declared once; the runner, the message parser and the state observer all
    read it from `OPERATIONS`.

    - `message`: its pydantic model (`op` literal, `vm` form, `params`), the wire contract;
    - `point`: its hook base point (`before_<point>`, `after_<point>`, `after_<point>_fail`),
      a row of the hook-point table;
    - `payload`: what those chains receive, as that row says;
    - `expects`: the libvirt lifecycle events (`defined`, `started`, ...) its own calls cause,
      so they are not reported as changes nobody asked for;
    - `prepare(ctx) -> payload`: the XML the `before_<point>` chain sees;
    - `execute(ctx, payload)`: the libvirt call, with the payload as the chain left it;
      retried by the runner when it raises a transient error, so it must be safe to repeat;
    - `done(ctx) -> bool`: whether the op's effect is already there (a no-op, or a request
      recovered after a crash that needs no new run);
    - `devices`: a device base point (`device_create`, `device_destroy`) whose chains run once
      per device of the payload around the op's own: `before_<devices>` before `before_<point>`
      (its edits go into the payload), `after_<devices>` / `_fail` after the op's;
    - `device_custom(op)`: the custom properties of the one device the op acts on (a hotplug's
      spec), handed to its hooks over the message's `custom`;
    - `chains`: which of the point's three chains it runs (an op that is one half of a
      hook point, as the destination's parts of a migration, runs only its own);
    - `control`: runs at once, outside its VM's queue (it acts on the job running there);
    - `launch_flags(ctx) -> int`: the libvirt start flags the op would use; the runner keeps
      them in the hooks' launch-flags file around its chains (VDSM's) and hands what the
      `before_*` chains left there to `execute` as `ctx.launch_flags`.
    """

    message: type[M]
    point: str
    payload: Payload
    expects: tuple[str, ...]
    prepare: Callable[[Ctx[M]], str]
    execute: Callable[[Ctx[M], str], None]
    done: Callable[[Ctx[M]], bool] = _never_done
    devices: str | None = None
    device_custom: Callable[[M], Mapping[str, str]] = _no_device_custom
    chains: tuple[Chain, ...] = ALL_CHAINS
    control: bool = False
    launch_flags: Callable[[Ctx[M]], int] | None = None

    @property
    def name(self) -> str:
        return self.message.op_name()


OPERATIONS: dict[str, Operation[Any]] = {}


def declare(operation: Operation[M]) -> Operation[M]:
    """Register `operation` under its message's op name; one declaration per name."""
    name = operation.name
    if name in OPERATIONS:
        raise ValueError(f"operation {name!r} is declared twice")
    OPERATIONS[name] = operation
    return operation
