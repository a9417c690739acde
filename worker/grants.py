"""Broker permissions as data: one `Grant` per broker user, computed from the name prefix and the
host id for each role (host, control plane, monitor, administrator). `worker.brokeradmin` applies
them (rabbitmqctl, management-API calls, a definitions file); docs/security.md explains them."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from worker.config import HOST_RE
from worker.topology import Topology

NOTHING = "^$"  # matches no resource name we use (the empty name is the default exchange)
EVERYTHING = ".*"
USER_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")


def _esc(name: str) -> str:
    """A name as a literal regex (only what is special outside a class: `-` stays readable)."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", name)


def _alt(*names: str) -> str:
    """An anchored regex matching exactly these resource names."""
    return "^(" + "|".join(_esc(n) for n in names) + ")$"


@dataclass(frozen=True)
class Grant:
    """What one broker user may do in one vhost: resource permissions (regexes on queue and
    exchange names) and topic permissions (regexes on routing keys, per topic exchange)."""

    user: str
    role: str  # host | control-plane | monitor | administrator
    configure: str
    write: str
    read: str
    topics: dict[str, tuple[str, str]] = field(default_factory=dict)  # exchange -> (write, read)
    tags: str = ""


def host_grant(prefix: str, host: str, user: str | None = None) -> Grant:
    """The worker of `host`: its own queues, its own routing keys, nothing else."""
    if not HOST_RE.match(host):
        raise ValueError(f"host id {host!r} must match [A-Za-z0-9_-]+")
    t = Topology(prefix, host)
    own = (t.host_queue.name, t.dead_queue.name)
    key = "^" + _esc(host) + "$"
    return Grant(
        user=_check_user(user or host),
        role="host",
        configure=_alt(*own),
        # bind own queues (write on the queue), publish events and dead letters
        write=_alt(*own, t.events.name, t.dlx.name),
        # consume own queues; bind them to the ops exchange and the dead-letter exchange
        read=_alt(*own, t.ops.name, t.dlx.name),
        topics={
            t.events.name: ("^" + _esc(host) + r"\.", NOTHING),
            t.ops.name: (NOTHING, key),
            t.dlx.name: (key, key),
        },
    )


def control_plane_grant(prefix: str, name: str) -> Grant:
    """A publisher of operations: publish to `<prefix>.ops` (any host), read every event (live
    through its own tap queues, or from the events stream) and the operations stream; never a
    host's queue, never publish an event."""
    t = Topology(prefix, "x")
    taps = "^" + _esc(f"{prefix}.events.tap.")
    return Grant(
        user=_check_user(name),
        role="control-plane",
        # its own tap queues only: with `declare_shared = false` the exchanges and streams are
        # only checked (passive declares need no permission)
        configure=taps,
        write=_alt(t.ops.name) + "|" + taps,
        read=_alt(t.events.name, t.events_log.name, t.ops_log.name) + "|" + taps,
        topics={
            t.ops.name: (EVERYTHING, NOTHING),
            t.events.name: (NOTHING, EVERYTHING),
        },
    )


def monitor_grant(prefix: str, name: str) -> Grant:
    """A reader of events only (dashboards, `vmworker events --follow`)."""
    t = Topology(prefix, "x")
    taps = "^" + _esc(f"{prefix}.events.tap.")
    return Grant(
        user=_check_user(name),
        role="monitor",
        configure=taps,
        write=taps,
        read=_alt(t.events.name, t.events_log.name) + "|" + taps,
        topics={t.events.name: (NOTHING, EVERYTHING)},
    )


def admin_grant(name: str) -> Grant:
    """An administrator (management UI, `vmworker broker setup`): everything, in one vhost."""
    return Grant(
        user=_check_user(name),
        role="administrator",
        configure=EVERYTHING,
        write=EVERYTHING,
        read=EVERYTHING,
        tags="administrator",
    )


def _check_user(user: str) -> str:
    if not USER_RE.match(user):
        raise ValueError(f"broker user name {user!r} must match [A-Za-z0-9_.@-]+")
    return user


def generate_password() -> str:
    return secrets.token_urlsafe(24)
