"""Broker identities: one RabbitMQ user per host, per control plane and per monitor, each allowed
exactly what its role needs (docs/security.md).

The permissions are data (`Grant`), computed from the name prefix and the host id; they are applied
with `rabbitmqctl` (`Rabbitmqctl`), or printed as management-API calls, or written into a RabbitMQ
definitions file (what the docker-compose stack loads at boot). All three come from the same
`Grant` (worker/grants.py), so they cannot drift apart.

A host's user may
- declare, bind and consume its own queues `<prefix>.ops.<host>` and `<prefix>.ops.<host>.dead`,
  binding them only with its own host id as the key (topic permission on `<prefix>.ops` and
  `<prefix>.ops.dlx`);
- publish to `<prefix>.events` only with routing keys starting `<host>.`, and to
  `<prefix>.ops.dlx` only with its own host id;
- nothing else: no other queue, no declaring the shared exchanges and streams (`vmworker broker
  setup` makes those, and the worker runs with `declare_shared = false`), no publishing
  operations, no reading events.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from worker.cliopts import connect_or_exit, settings_or_exit
from worker.config import HOST_RE
from worker.grants import (
    Grant,
    _check_user,
    admin_grant,
    control_plane_grant,
    generate_password,
    host_grant,
    monitor_grant,
)
from worker.topology import Topology


# -- applying a grant ------------------------------------------------------------------------
class BrokerAdminError(RuntimeError):
    pass


class Rabbitmqctl:
    """`rabbitmqctl [-n node]` as a subprocess (root, or the rabbitmq user, on a broker node).
    Passwords go through stdin, never the command line."""

    def __init__(
        self,
        node: str | None = None,
        *,
        executable: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.node = node
        self.executable = executable or os.environ.get("VMWORKER_RABBITMQCTL", "rabbitmqctl")
        self.env = env
        self.timeout = timeout

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        """Run it; its stdout. BrokerAdminError when it fails."""
        ok, out = self.attempt(*args, stdin=stdin)
        if not ok:
            raise BrokerAdminError(f"rabbitmqctl {args[0]} failed: {out}")
        return out

    def attempt(self, *args: str, stdin: str | None = None) -> tuple[bool, str]:
        """Run it; (succeeded, stdout, or the error's text when it failed)."""
        argv = [self.executable, *(["-n", self.node] if self.node else []), "--quiet", *args]
        try:
            res = subprocess.run(
                argv,
                input=(stdin or "").encode(),
                capture_output=True,
                timeout=self.timeout,
                env=self.env,
            )
        except FileNotFoundError:
            raise BrokerAdminError(
                f"{self.executable} not found (run this on a broker node)"
            ) from None
        out = res.stdout.decode(errors="replace")
        if res.returncode != 0:
            return False, (res.stderr.decode(errors="replace") or out)[-800:]
        return True, out

    def users(self) -> set[str]:
        out = self("list_users", "--no-table-headers")
        return {line.split("\t", 1)[0] for line in out.splitlines() if line.strip()}

    def apply(
        self,
        grant: Grant,
        *,
        vhost: str = "/",
        password: str | None = None,
        certificate_only: bool = False,
    ) -> tuple[bool, str | None]:
        """Create the user if missing (with `password`, a generated one, or with no usable
        password when `certificate_only`), else change its password if one is given; then
        replace its tags, permissions and topic permissions. Returns (created, the generated
        password or None).

        One `import_definitions` call carries it all (each rabbitmqctl call costs ~0.7 s of
        Erlang start-up), the password through stdin, never on the command line."""
        created = grant.user not in self.users()
        if not created:
            self("clear_topic_permissions", "-p", vhost, grant.user)
        doc = grant_definitions(grant, vhost=vhost)
        user = doc["users"][0]
        generated = None
        if certificate_only:
            del user["password"]
            user.update(password_hash="", hashing_algorithm="rabbit_password_hashing_sha256")
        elif password is not None:
            user["password"] = password
        elif created:
            user["password"] = generated = generate_password()
        else:
            del doc["users"]  # keep the existing user and its password
        self("import_definitions", "--format", "json", stdin=json.dumps(doc))
        return created, generated

    def revoke(self, user: str) -> bool:
        """Delete the user; RabbitMQ closes its open connections at once (CONNECTION_FORCED,
        "user ... is deleted"), so none goes on with permissions it had cached. False if there
        was no such user."""
        existed, out = self.attempt("delete_user", user)
        if not existed and "does not exist" not in out:
            raise BrokerAdminError(f"rabbitmqctl delete_user failed: {out}")
        return existed


# -- the same grant, in other forms ------------------------------------------------------------
def api_calls(
    grant: Grant, vhost: str = "/", *, certificate_only: bool = False
) -> list[tuple[str, str, dict[str, Any] | None]]:
    """The management HTTP API calls equivalent to `Rabbitmqctl.apply` (method, path, body)."""
    v, u = quote(vhost, safe=""), quote(grant.user, safe="")
    login = {"password_hash": ""} if certificate_only else {"password": "<password>"}
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("PUT", f"/api/users/{u}", {**login, "tags": grant.tags}),
        (
            "PUT",
            f"/api/permissions/{v}/{u}",
            {"configure": grant.configure, "write": grant.write, "read": grant.read},
        ),
        ("DELETE", f"/api/topic-permissions/{v}/{u}", None),
    ]
    for exchange, (write, read) in grant.topics.items():
        calls.append(
            (
                "PUT",
                f"/api/topic-permissions/{v}/{u}",
                {"exchange": exchange, "write": write, "read": read},
            )
        )
    return calls


def curl_lines(
    grant: Grant,
    vhost: str = "/",
    api: str = "http://localhost:15672",
    *,
    certificate_only: bool = False,
) -> list[str]:
    """`api_calls` as curl command lines (an administrator's credentials to fill in)."""
    out = []
    for method, path, body in api_calls(grant, vhost, certificate_only=certificate_only):
        data = f" -H 'content-type: application/json' -d '{json.dumps(body)}'" if body else ""
        out.append(f"curl -fsS -u admin:ADMIN_PASSWORD -X {method} '{api}{path}'{data}")
    return out


def grant_definitions(
    grant: Grant, *, vhost: str = "/", password: str | None = None
) -> dict[str, Any]:
    """One user's part of a definitions document: the user, its permissions and topic
    permissions."""
    return {
        "users": [{"name": grant.user, "password": password, "tags": grant.tags}],
        "permissions": [
            {
                "user": grant.user,
                "vhost": vhost,
                "configure": grant.configure,
                "write": grant.write,
                "read": grant.read,
            }
        ],
        "topic_permissions": [
            {"user": grant.user, "vhost": vhost, "exchange": exchange, "write": write, "read": read}
            for exchange, (write, read) in grant.topics.items()
        ],
    }


def definitions(
    grants: list[tuple[Grant, str]],
    topology: Topology,
    *,
    vhost: str = "/",
    hosts: Sequence[str] = (),
) -> dict[str, Any]:
    """A RabbitMQ definitions document (`load_definitions` / `rabbitmqctl import_definitions`):
    the users with their passwords and permissions, and the shared topology; with `hosts`, also
    each host's queues, so that operations published before a worker first starts are kept."""
    users: list[Any] = []
    perms: list[Any] = []
    topic_perms: list[Any] = []
    for g, password in grants:
        part = grant_definitions(g, vhost=vhost, password=password)
        users += part["users"]
        perms += part["permissions"]
        topic_perms += part["topic_permissions"]
    exchanges = [
        {
            "name": x.name,
            "vhost": vhost,
            "type": x.type,
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
        for x in (topology.ops, topology.events, topology.dlx)
    ]
    queues, bindings = [], []
    host_queues = []
    for h in hosts:
        t = replace(topology, host=h)
        host_queues += [t.host_queue, t.dead_queue]
    for q in (topology.ops_log, topology.events_log, *host_queues):
        queues.append(
            {
                "name": q.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": dict(getattr(q, "queue_arguments", None) or {}),
            }
        )
        assert q.exchange is not None
        bindings.append(
            {
                "source": q.exchange.name,
                "vhost": vhost,
                "destination": q.name,
                "destination_type": "queue",
                "routing_key": q.routing_key,
                "arguments": {},
            }
        )
    return {
        "vhosts": [{"name": vhost}],
        "users": users,
        "permissions": perms,
        "topic_permissions": topic_perms,
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }


# -- the `vmworker broker` commands -------------------------------------------------------------
def _grant_for(
    prefix: str, host: str | None, control_plane: str | None, monitor: str | None, user: str | None
) -> Grant:
    chosen = [x for x in (host, control_plane, monitor) if x]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --host, --control-plane, --monitor")
    try:
        if host:
            return host_grant(prefix, host, user)
        if control_plane:
            return control_plane_grant(prefix, control_plane)
        assert monitor is not None
        return monitor_grant(prefix, monitor)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_load = settings_or_exit


_who = [
    click.option("--host", help="a hypervisor's host id: its worker's identity"),
    click.option("--control-plane", metavar="NAME", help="a publisher of operations"),
    click.option("--monitor", metavar="NAME", help="a reader of events only"),
]
_where = [
    click.option("--vhost", default="/", show_default=True),
    click.option("--prefix", help="name prefix (default: from the config)"),
    click.option("--node", help="rabbitmqctl -n NODE (default: the local node)"),
    click.option("--config", type=click.Path(path_type=Path), help="TOML config file"),
]


def _options(opts: list[Any]) -> Any:
    def deco(f: Any) -> Any:
        for o in reversed(opts):
            f = o(f)
        return f

    return deco


@click.group()
def broker() -> None:
    """Broker identities and shared topology (run on a broker node, as root or rabbitmq)."""


@broker.command()
@_options(_who)
@click.option("--user", help="broker user name of a host (default: the host id)")
@click.option(
    "--password-file",
    type=click.File("r"),
    help="first line is the password (- for stdin); default: generate and print it",
)
@click.option(
    "--certificate-only",
    is_flag=True,
    help="no password: the user logs in with a client certificate (EXTERNAL)",
)
@click.option(
    "--print-api",
    is_flag=True,
    help="print the equivalent management-API calls instead of running rabbitmqctl",
)
@_options(_where)
def grant(
    host: str | None,
    control_plane: str | None,
    monitor: str | None,
    user: str | None,
    password_file: Any,
    certificate_only: bool,
    print_api: bool,
    vhost: str,
    prefix: str | None,
    node: str | None,
    config: Path | None,
) -> None:
    """Create or update the broker user of a host, control plane or monitor, with exactly the
    permissions its role needs. A generated password is printed once, alone on stdout."""
    g = _grant_for(
        prefix or _load(config, check_broker=False).prefix, host, control_plane, monitor, user
    )
    if print_api:
        for line in curl_lines(g, vhost, certificate_only=certificate_only):
            click.echo(line)
        return
    password = password_file.readline().rstrip("\r\n") if password_file else None
    if password_file and not password:
        raise click.BadParameter("the password file is empty", param_hint="--password-file")
    try:
        created, generated = Rabbitmqctl(node).apply(
            g, vhost=vhost, password=password, certificate_only=certificate_only
        )
    except BrokerAdminError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{'created' if created else 'updated'} {g.role} user {g.user!r} in vhost "
        f"{vhost!r}" + ("" if created or password else " (password unchanged)"),
        err=True,
    )
    if generated:
        click.echo(generated)


@broker.command()
@_options(_who)
@click.option("--user", help="the broker user to delete (instead of a role name)")
@click.option("--node", help="rabbitmqctl -n NODE (default: the local node)")
def revoke(
    host: str | None,
    control_plane: str | None,
    monitor: str | None,
    user: str | None,
    node: str | None,
) -> None:
    """Delete a broker user and close its open connections."""
    names = [x for x in (user, host, control_plane, monitor) if x]
    if len(names) != 1:
        raise click.UsageError("give exactly one of --user, --host, --control-plane, --monitor")
    try:
        existed = Rabbitmqctl(node).revoke(_check_user(names[0]))
    except (BrokerAdminError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'deleted' if existed else 'no such'} user {names[0]!r}", err=True)


def stream_policy(name: str, limits: dict[str, object]) -> tuple[str, str, str]:
    """(policy name, pattern, definition) giving one stream its limits: what `broker setup`
    applies to a stream made before they were its arguments."""
    return f"{name}-limits", f"^{re.escape(name)}$", json.dumps(limits, sort_keys=True)


def apply_stream_policies(
    topology: Topology, names: list[str], ctl: Rabbitmqctl, vhost: str = "/"
) -> list[str]:
    """Set the limits policy of each stream in `names`; the policies' names. BrokerAdminError
    naming the commands to run when rabbitmqctl is missing or refuses."""
    limits = topology.stream_limits()
    done = []
    for name in names:
        policy, pattern, definition = stream_policy(name, limits[name])
        args = ["set_policy", "-p", vhost, "--apply-to", "queues", "--priority", "10"]
        args += [policy, pattern, definition]
        try:
            ok, out = ctl.attempt(*args)
        except BrokerAdminError as exc:
            ok, out = False, str(exc)
        if not ok:
            line = " ".join(f"'{a}'" if a[:1] in "^{" else a for a in args)
            raise BrokerAdminError(
                f"stream {name} exists without its limits ({out.strip()}); on a broker node, "
                f"run: rabbitmqctl {line} (docs/deploy.md, Stream limits)"
            )
        done.append(policy)
    return done


@broker.command()
@click.option("--host", "hosts", multiple=True, help="also declare this host's queues")
@click.option("--broker", help="an administrator's broker URL")
@click.option("--prefix", help="name prefix (default: from the config)")
@click.option("--config", type=click.Path(path_type=Path), help="TOML config file")
@click.option("--vhost", default="/", show_default=True, help="the vhost of a limits policy")
@click.option("--node", help="rabbitmqctl -n NODE for a limits policy (default: the local node)")
def setup(
    hosts: tuple[str, ...],
    broker: str | None,
    prefix: str | None,
    config: Path | None,
    vhost: str,
    node: str | None,
) -> None:
    """Declare the shared exchanges and streams (and the queues of --host hosts, so that their
    operations are kept before their workers first start), as an administrator. A stream made
    before its size limit was an argument gets its limits as a policy (with rabbitmqctl)."""
    for h in hosts:
        if not HOST_RE.match(h):
            raise click.BadParameter(f"not a host id: {h!r}", param_hint="--host")
    s = _load(config, broker=broker, prefix=prefix)
    shared = replace(Topology.from_settings(s), passive=False)
    with connect_or_exit(s) as conn:
        differ = shared.declare_shared(conn)
        for h in hosts:
            replace(shared, host=h).declare_host(conn)
    click.echo(
        f"declared {shared.ops.name}, {shared.events.name}, {shared.dlx.name}, "
        f"{shared.ops_log.name}, {shared.events_log.name}"
        + "".join(f", {replace(shared, host=h).host_queue.name}" for h in hosts),
        err=True,
    )
    if differ:
        try:
            policies = apply_stream_policies(shared, differ, Rabbitmqctl(node), vhost)
        except BrokerAdminError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"applied the limits as policies: {', '.join(policies)}", err=True)


@broker.command("definitions")
@click.option("--host", "hosts", multiple=True, help="a host (user = host id)")
@click.option("--control-plane", "planes", multiple=True, metavar="NAME")
@click.option("--monitor", "monitors", multiple=True, metavar="NAME")
@click.option("--admin", "admins", multiple=True, metavar="NAME", help="an administrator")
@click.option(
    "--password",
    "passwords",
    multiple=True,
    metavar="USER=PASSWORD",
    help="a user's password (default: generated)",
)
@click.option("--vhost", default="/", show_default=True)
@click.option("--prefix", help="name prefix (default: from the config)")
@click.option("--config", type=click.Path(path_type=Path), help="TOML config file")
def definitions_cmd(
    hosts: tuple[str, ...],
    planes: tuple[str, ...],
    monitors: tuple[str, ...],
    admins: tuple[str, ...],
    passwords: tuple[str, ...],
    vhost: str,
    prefix: str | None,
    config: Path | None,
) -> None:
    """Print a RabbitMQ definitions file (users, permissions, the shared topology and the
    hosts' queues) for a broker to load at boot (`load_definitions`)."""
    s = _load(config, prefix=prefix, check_broker=False)  # printed, never connected to
    given = dict(p.split("=", 1) for p in passwords if "=" in p)
    try:
        grants = (
            [host_grant(s.prefix, h) for h in hosts]
            + [control_plane_grant(s.prefix, n) for n in planes]
            + [monitor_grant(s.prefix, n) for n in monitors]
            + [admin_grant(n) for n in admins]
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    doc = definitions(
        [(g, given.get(g.user) or generate_password()) for g in grants],
        replace(Topology.from_settings(s), passive=False),
        vhost=vhost,
        hosts=list(hosts),
    )
    click.echo(json.dumps(doc, indent=2))
