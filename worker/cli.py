"""The `vmworker` command."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from worker import logs
from worker.cliopts import (
    BrokerFailure,
    BrokerGroup,
    broker_option,
    config_option,
    connect_or_exit,
    idle_option,
    settings_or_exit,
)
from worker.topology import Topology

_broker = broker_option
_config = config_option
_settings = settings_or_exit
_connect = connect_or_exit


@click.group(cls=BrokerGroup)
@click.version_option(package_name="vmworker")
def main() -> None:
    """vmworker: VM operations from RabbitMQ, run on this host's libvirt with hook chains."""


@main.command()
@click.option("--host", help="this host's id (the routing key of its queue)")
@_broker
@click.option("--libvirt", "libvirt_uri", help="libvirt URI (default qemu:///system)")
@click.option("--hooks", "hooks_root", type=click.Path(path_type=Path), help="hooks root")
@click.option("--state-dir", type=click.Path(path_type=Path), help="journal directory")
@click.option("--concurrency", type=int, help="operations at once (distinct VMs)")
@click.option("--metrics-port", type=int, help="Prometheus metrics port (0 = off)")
@click.option("--metrics-address", help="address the metrics port listens on (default 127.0.0.1)")
@_config
def run(config: Path | None, **flags: Any) -> None:
    """Consume this host's queue and run its operations until SIGTERM/SIGINT."""
    s = _settings(config, **flags)
    from worker.hooks.cli import hooks_root_or_exit

    hooks_root_or_exit(s.hooks_root)  # before connecting to anything: exit 2, naming it
    logs.configure(s.log_level, host=s.host)
    from worker.journal import JournalInUse
    from worker.service import Service
    from worker.tracing import TracingUnavailable

    try:
        svc = Service(s, freeze_gc=True)  # this process is the worker: nothing else to collect
    except TracingUnavailable as exc:
        raise BrokerFailure(f"bad configuration: {exc}") from None
    except JournalInUse as exc:  # a second worker on this state_dir: one line, exit 2
        raise BrokerFailure(str(exc)) from None
    svc.install_signal_handlers()
    svc.run()


@main.command()
@click.option("--host", required=True, help="target host id")
@click.argument("op")
@click.option("--vm-uuid", required=True)
@click.option("--vm-name")
@click.option("--spec", type=click.File("r"), help="VM spec JSON file, or - for stdin")
@click.option("--param", "params", multiple=True, metavar="K=V", help="op parameter (JSON value)")
@click.option("--custom", multiple=True, metavar="K=V", help="custom property for hooks")
@click.option("--request-id", help="message_id (default: a new uuid)")
@click.option("--correlation-id")
@click.option(
    "--deadline",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]),
    help="ISO 8601: not run after this time",
)
@click.option("--user-id", help="user_id property (default: the broker URL's user)")
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=0.0,
    help="wait this many seconds for the outcome and print its event (exit 1 on fail or none)",
)
@_broker
@_config
def publish(
    host: str,
    op: str,
    vm_uuid: str,
    vm_name: str | None,
    spec: Any,
    params: tuple[str, ...],
    custom: tuple[str, ...],
    request_id: str | None,
    correlation_id: str | None,
    deadline: datetime | None,
    user_id: str | None,
    wait_s: float,
    broker: str | None,
    config: Path | None,
) -> None:
    """Publish one operation message to HOST; prints its request id (and, with --wait, its
    terminal event as one JSON line)."""
    from vmworker.client import Client, OperationFailed, RequestTimeout
    from worker.publish import build_body, parse_kv

    s = _settings(config, broker=broker, host=host)
    vm: dict[str, Any] = json.load(spec) if spec else {}
    vm["uuid"] = vm_uuid
    if vm_name:
        vm["name"] = vm_name
    try:
        body = build_body(op, vm, parse_kv(params, typed=True), parse_kv(custom, typed=False))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    _validate(body, s.max_body_bytes)
    topo = Topology.from_settings(s, host)
    from worker.amqp import broker_user

    with _connect(s) as conn:
        if s.declare_shared:
            topo.declare_shared(conn)
        client = Client(settings=s, connection=conn)
        req = client.submit(
            host,
            body,
            request_id=request_id,
            correlation_id=correlation_id,
            deadline=deadline,
            user_id=user_id or broker_user(s),  # checked by the broker, then by the worker
            validate=False,  # checked above, before connecting
        )
        click.echo(req.request_id)
        if wait_s <= 0:
            return
        sys.stdout.flush()
        try:
            ev = req.result(wait_s)
        except OperationFailed as exc:
            click.echo(json.dumps(exc.event, separators=(",", ":")))
            raise SystemExit(1) from None
        except RequestTimeout as exc:
            click.echo(str(exc), err=True)
            raise SystemExit(1) from None
        click.echo(json.dumps(ev, separators=(",", ":")))


def _validate(body: dict[str, Any], max_bytes: int) -> None:
    """The worker's own check (worker.messages.parse_operation), before anything is sent."""
    from worker.errors import OpError
    from worker.messages import parse_operation

    try:
        parse_operation(json.dumps(body).encode(), max_bytes=max_bytes)
    except OpError as exc:
        raise click.ClickException(f"invalid message, nothing sent: {exc.message}") from None


@main.command()
@click.option("--host", help="only this host's events")
@click.option("--vm", help="only this VM's events (uuid)")
@click.option("--follow", is_flag=True, help="keep waiting for new events")
@click.option("--from-start", is_flag=True, help="read the whole events log stream first")
@idle_option("without --follow: stop after this many quiet seconds", default=2.0)
@_broker
@_config
def events(
    host: str | None,
    vm: str | None,
    follow: bool,
    from_start: bool,
    idle: float,
    broker: str | None,
    config: Path | None,
) -> None:
    """Print events, one JSON object per line."""
    from worker.subscribe import read_events

    s = _settings(config, broker=broker)
    topo = Topology.from_settings(s)
    with _connect(s) as conn:
        if s.declare_shared:
            topo.declare_shared(conn)
        try:
            for ev in read_events(
                conn,
                topo,
                host=host,
                vm=vm,
                from_start=from_start,
                follow=follow,
                idle_timeout=idle,
            ):
                click.echo(json.dumps(ev, separators=(",", ":")))
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass


@main.command()
@click.argument("op", required=False)
@click.option("--events", "events_", is_flag=True, help="The schema of events instead.")
def schema(op: str | None, events_: bool) -> None:
    """Print the JSON Schema (2020-12) of operation messages (one of every op), or of OP's;
    with --events, of events."""
    from worker.messages import OP_MODELS, message_schema

    if events_:
        from worker.eventschema import event_schema

        click.echo(json.dumps(event_schema(), indent=2))
        return
    if op is not None and op not in OP_MODELS:
        raise click.BadParameter(f"unknown op {op!r}; known: {', '.join(sorted(OP_MODELS))}")
    click.echo(json.dumps(message_schema(op), indent=2))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON instead of YAML.")
@click.option("--prefix", help="name prefix of exchanges and queues (default: vm)")
def asyncapi(as_json: bool, prefix: str | None) -> None:
    """Print the AsyncAPI 3.0 document of the wire contract (docs/asyncapi.yaml)."""
    from worker.asyncapi import asyncapi_document, to_json, to_yaml

    doc = asyncapi_document(prefix)
    click.echo(to_json(doc) if as_json else to_yaml(doc), nl=False)


@main.command()
@click.option("--slow", type=float, default=0.0, help="pause between steps (seconds)")
@click.option("--serve", is_flag=True, help="then serve the demo's fleet store (web UI, API)")
def demo(slow: float, serve: bool) -> None:
    """The whole path in one process, no services: kombu memory:// and libvirt test:///default."""
    from worker.demo import run_demo

    sys.exit(run_demo(pause=slow, serve=serve))


def _add_optional_groups() -> None:
    from worker.drain import drain
    from worker.history import history
    from worker.monitor import monitor
    from worker.replay import replay

    for command in (monitor, history, replay, drain):
        main.add_command(command)
    from worker.brokeradmin import broker

    main.add_command(broker)
    from worker.fleet.serve import fleet

    main.add_command(fleet)
    try:
        from worker.hooks.cli import hooks
    except ImportError:  # pragma: no cover - while the hooks CLI is being written
        return
    main.add_command(hooks)


_add_optional_groups()
