"""The deployment files agree with the code: docker-compose.yml, the Dockerfile, the systemd unit,
the example config and the broker definitions. Docker cannot run here, so the compose file is
parsed (PyYAML) and every command in it is parsed by the real `vmworker` CLI (click); the systemd
unit is checked by `systemd-analyze verify` where systemd is installed, and always parsed with
configparser with its ExecStart parsed by the CLI."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import click
import pytest
import yaml
from click.testing import CliRunner

from tests.support import REPO
from worker.brokeradmin import control_plane_grant, grant_definitions, host_grant, monitor_grant
from worker.cli import main
from worker.config import Settings, load_settings

COMPOSE = REPO / "docker-compose.yml"
UNIT = REPO / "deploy" / "vmworker@.service"
FLEET_UNIT = REPO / "deploy" / "vmworker-fleet.service"
EXAMPLE = REPO / "deploy" / "vmworker.toml"
DEFINITIONS = REPO / "deploy" / "rabbitmq" / "definitions.json"
RABBIT_CONF = REPO / "deploy" / "rabbitmq" / "rabbitmq.conf"


def parse_cli(argv: list[str]) -> click.Context:
    """Parse `vmworker ARGV` as the real command would, without running it: unknown commands or
    options, missing required ones and bad values raise click's errors."""
    cmd: click.Command = main
    parent: click.Context | None = None
    name, args = "vmworker", list(argv)
    while isinstance(cmd, click.Group):
        ctx = click.Context(cmd, info_name=name, parent=parent)
        sub_name, sub, args = cmd.resolve_command(ctx, args)
        assert sub is not None and sub_name is not None, argv
        parent, cmd, name = ctx, sub, sub_name
    return cmd.make_context(name, args, parent=parent)


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _definitions() -> dict[str, Any]:
    return json.loads(DEFINITIONS.read_text())


def test_the_cli_parser_used_here_rejects_bad_invocations():
    parse_cli(["run", "--host", "host-a"])
    parse_cli(["broker", "grant", "--host", "host-a"])
    for bad in (
        ["runn"],
        ["run", "--hots", "a"],
        ["publish", "start_vm"],
        ["broker", "nope"],
        ["run", "--concurrency", "many"],
    ):
        with pytest.raises(click.ClickException):
            parse_cli(bad)


def test_compose_stack_has_the_broker_two_hypervisors_their_workers_and_a_monitor():
    services = _compose()["services"]
    assert "management" in services["rabbitmq"]["image"]
    assert {"15672:15672", "5672:5672"} <= set(services["rabbitmq"]["ports"])
    for host in ("host-a", "host-b"):
        hyp, worker = services[host], services[f"worker-{host}"]
        assert hyp["build"] == {"context": ".", "target": "hypervisor"} and hyp["privileged"]
        assert hyp["hostname"] == host
        assert worker["build"] == {"context": ".", "target": "worker"}
        ctx = parse_cli(worker["command"][1:])
        assert ctx.command.name == "run" and ctx.params["host"] == host
        # the worker reaches its own libvirtd through the socket volume they share
        run_vol = next(v for v in hyp["volumes"] if v.endswith(":/run/libvirt"))
        assert run_vol in worker["volumes"]
        assert ctx.params["libvirt_uri"] == "qemu:///system"
        assert {"rabbitmq", host} <= set(worker["depends_on"])
    mon = services["monitor"]
    ctx = parse_cli(mon["command"][1:])
    assert ctx.command.name in ("events", "monitor")
    if ctx.command.name == "events":
        assert ctx.params["follow"] is True
    # named volumes are declared
    declared = set(_compose()["volumes"])
    for svc in services.values():
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            assert src.startswith("./") or src in declared, v


def test_every_compose_command_is_a_valid_vmworker_invocation_and_every_setting_exists():
    services = _compose()["services"]
    commands = 0
    for name, svc in services.items():
        cmd = svc.get("command")
        if cmd and cmd[0] == "vmworker":
            parse_cli(cmd[1:])
            commands += 1
        env = {k: v for k, v in (svc.get("environment") or {}).items() if k.startswith("VMWORKER")}
        fields = {f"VMWORKER_{k.upper()}": k for k in Settings.model_fields}
        values: dict[str, Any] = {}
        for var, value in env.items():
            top, _, sub = var.partition("__")  # a nested setting: VMWORKER_FLEET__TOKEN
            assert top in fields, (name, var)
            if sub:
                values.setdefault(fields[top], {})[sub.lower()] = value
            else:
                values[fields[top]] = value
        if values:
            if "allowed_publishers" in values:
                values["allowed_publishers"] = values["allowed_publishers"].split(",")
            Settings(**values)  # every value valid
    assert commands == 5  # two workers, the monitor, the fleet server, the control plane's tool


def test_compose_identities_are_the_ones_broker_grant_makes():
    services = _compose()["services"]
    defs = _definitions()
    perms = {p["user"]: p for p in defs["permissions"]}
    topics: dict[str, list[dict[str, str]]] = {}
    for t in defs["topic_permissions"]:
        topics.setdefault(t["user"], []).append(t)

    def same(user: str, grant: Any) -> None:
        want = grant_definitions(grant)
        assert {k: perms[user][k] for k in ("configure", "write", "read")} == {
            k: want["permissions"][0][k] for k in ("configure", "write", "read")
        }, user
        strip = lambda ts: sorted((t["exchange"], t["write"], t["read"]) for t in ts)  # noqa: E731
        assert strip(topics.get(user, [])) == strip(want["topic_permissions"]), user

    users = {u["name"]: u["password"] for u in defs["users"]}
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if "VMWORKER_BROKER" not in env:
            continue
        url = urlsplit(env["VMWORKER_BROKER"])
        user, password = unquote(url.username or ""), unquote(url.password or "")
        assert users.get(user) == password, (name, user)  # the broker knows this login
        cmd = svc["command"][1:]
        if cmd[0] == "run":
            host = parse_cli(cmd).params["host"]
            assert user == host
            same(user, host_grant("vm", host))
            assert env["VMWORKER_DECLARE_SHARED"] == "false"  # its user may not declare them
            for publisher in env["VMWORKER_ALLOWED_PUBLISHERS"].split(","):
                same(publisher, control_plane_grant("vm", publisher))
        elif name == "monitor":
            same(user, monitor_grant("vm", user))
        elif name == "fleet":  # it reads both streams and publishes replays: a control plane
            same(user, control_plane_grant("vm", user))


def test_compose_fleet_server_uses_postgres_and_publishes_its_port_on_the_loopback_only():
    services = _compose()["services"]
    fleet, db = services["fleet"], services["postgres"]
    ctx = parse_cli(fleet["command"][1:])
    assert ctx.command.name == "serve" and ctx.parent and ctx.parent.command.name == "fleet"
    # inside its container it must listen beyond the loopback; the host sees it on 127.0.0.1
    assert ctx.params["bind"] == "0.0.0.0" and ctx.params["port"] == 8470
    assert fleet["ports"] == ["127.0.0.1:8470:8470"]
    url = urlsplit(fleet["environment"]["VMWORKER_FLEET__DATABASE_URL"])
    assert url.scheme == "postgresql+psycopg" and url.hostname == "postgres"
    env = db["environment"]
    assert (url.username, url.password, url.path.lstrip("/")) == (
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        env["POSTGRES_DB"],
    )
    assert db["image"].startswith("postgres:") and "pg_isready" in db["healthcheck"]["test"]
    assert fleet["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "ports" not in db  # the database is the fleet server's business only
    assert fleet["environment"]["VMWORKER_FLEET__TOKEN"]  # actions work in the try-out stack


def test_fleet_server_binds_the_loopback_unless_told_otherwise():
    assert Settings().fleet.bind == "127.0.0.1"
    ctx = parse_cli(["fleet", "serve"])
    assert ctx.params["bind"] is None  # no flag: the setting's default decides


def test_broker_definitions_are_what_vmworker_broker_definitions_prints():
    defs = _definitions()
    conf = RABBIT_CONF.read_text()
    mounts = _compose()["services"]["rabbitmq"]["volumes"]
    target = re.search(r"^load_definitions\s*=\s*(\S+)", conf, re.M)
    assert target and f"./deploy/rabbitmq/definitions.json:{target.group(1)}:ro" in mounts
    assert any(
        m.startswith("./deploy/rabbitmq/rabbitmq.conf:/etc/rabbitmq/conf.d/") for m in mounts
    )
    # the command quoted in rabbitmq.conf, with the file's own passwords
    roles = {p["user"]: p for p in defs["permissions"]}
    args = ["broker", "definitions", "--prefix", "vm"]
    for u in defs["users"]:
        if "administrator" in u["tags"]:
            args += ["--admin", u["name"]]
        elif roles[u["name"]]["configure"].startswith("^(vm\\.ops\\."):
            args += ["--host", u["name"]]
        elif "vm\\.ops" in roles[u["name"]]["write"]:
            args += ["--control-plane", u["name"]]
        else:
            args += ["--monitor", u["name"]]
        args += ["--password", f"{u['name']}={u['password']}"]
    res = CliRunner().invoke(main, args, env={"VMWORKER_CONFIG": str(EXAMPLE)})
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == defs
    assert {"host-a", "host-b", "control-plane", "monitor", "admin"} == {
        u["name"] for u in defs["users"]
    }


def test_dockerfile_builds_worker_and_hypervisor_images_on_debian_12():
    text = (REPO / "Dockerfile").read_text()
    stages = {name: image for image, name in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M)}
    assert stages and all(image.startswith("debian:12") for image in stages.values()), stages
    used = {s["build"]["target"] for s in _compose()["services"].values() if "build" in s}
    assert used == {"worker", "hypervisor"} and used <= set(stages), used
    assert "libvirt-dev" in text and re.search(r"pip install .*/src", text)
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):
        if "--from=" in line:
            continue
        *sources, _dest = [w for w in line.split() if not w.startswith("--")]
        for path in sources:
            assert (REPO / path).exists(), path
    assert (REPO / ".dockerignore").read_text().count(".venv")


def test_systemd_unit_is_valid_and_starts_the_cli_sandboxed():
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    svc = cp["Service"]
    exe, *argv = shlex.split(svc["ExecStart"].replace("%i", "host-a"))
    assert exe.endswith("/bin/vmworker")
    ctx = parse_cli(argv)
    assert ctx.command.name == "run" and ctx.params["host"] == "host-a"
    assert str(ctx.params["state_dir"]) == "/var/lib/vmworker/host-a"
    assert svc["StateDirectory"] == "vmworker/%i"  # the state dir is writable ...
    assert svc["ProtectSystem"] == "strict"  # ... and nothing else
    assert "/etc/vmworker" in svc["ReadOnlyPaths"].split()  # hooks and config: read-only
    assert svc["Restart"] in ("always", "on-failure") and svc["NoNewPrivileges"] == "yes"
    assert "AF_UNIX" in svc["RestrictAddressFamilies"]  # libvirt's socket
    assert svc["SupplementaryGroups"] == "libvirt"
    assert svc["Environment"] == "VMWORKER_CONFIG=/etc/vmworker/vmworker.toml"
    assert "Install" in cp and cp["Install"]["WantedBy"] == "multi-user.target"


def test_fleet_systemd_unit_is_valid_and_serves_sandboxed():
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(FLEET_UNIT.read_text())
    svc = cp["Service"]
    exe, *argv = shlex.split(svc["ExecStart"])
    assert exe.endswith("/bin/vmworker")
    ctx = parse_cli(argv)
    assert ctx.command.name == "serve" and ctx.params["bind"] is None  # 127.0.0.1: the default
    assert str(ctx.params["state_dir"]) == "/var/lib/" + svc["StateDirectory"]
    assert svc["ProtectSystem"] == "strict" and svc["NoNewPrivileges"] == "yes"
    assert "/etc/vmworker" in svc["ReadOnlyPaths"].split()
    assert svc["EnvironmentFile"] == "-/etc/vmworker/fleet.env"  # its token and credentials
    assert svc["Environment"] == "VMWORKER_CONFIG=/etc/vmworker/vmworker.toml"
    assert cp["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("name", ["vmworker@host-a.service", "vmworker-fleet.service"])
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path, name: str):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze missing (Debian systemd): run scripts/bootstrap libvirtd")
    # an instance of the template, with ExecStart pointing at this checkout's vmworker
    vmworker = Path(sys.executable).with_name("vmworker")
    source = FLEET_UNIT if name == "vmworker-fleet.service" else UNIT
    unit = tmp_path / name
    unit.write_text(source.read_text().replace("/opt/vmworker/bin/vmworker", str(vmworker)))
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and res.stderr.strip() == "" and res.stdout.strip() == "", (
        res.stdout + res.stderr
    )


def test_example_config_documents_every_setting_and_loads():
    text = EXAMPLE.read_text()
    for name in Settings.model_fields:
        documented = re.search(rf"^\s*(#\s*)?{name}\s*=|^\[{name}[.\]]", text, re.M)
        assert documented, f"{name} is not in deploy/vmworker.toml"
    s = load_settings(EXAMPLE)
    assert s.declare_shared is False and s.login_method == "EXTERNAL"
    assert s.allowed_publishers == ["control-plane"]
    assert len(s.broker_urls) == 3 and all(u.startswith("amqps://") for u in s.broker_urls)
    assert s.retry_policy("shutdown_vm").deadline_s == 300.0
