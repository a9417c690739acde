"""The one settings object: defaults < TOML file < environment (VMWORKER_*) < command-line flags."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG = Path("/etc/vmworker/vmworker.toml")
REPO_HOOKDIRS = Path(__file__).resolve().parent.parent / "hookdirs"
INSTALLED_HOOKS = Path("/etc/vmworker/hooks")
HOST_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def default_hooks_root() -> Path:
    """/etc/vmworker/hooks where installed, the repo's hookdirs/ in development.

    An /etc/vmworker/hooks that is there but not a usable directory stays the root (and
    stops the worker): it is never silently replaced by the repo's hooks."""
    if os.path.lexists(INSTALLED_HOOKS) or not REPO_HOOKDIRS.is_dir():
        return INSTALLED_HOOKS
    return REPO_HOOKDIRS


class RetryPolicy(BaseModel):
    """How a transient libvirt error is retried (tenacity: exponential backoff with jitter)."""

    attempts: int = Field(5, ge=1, le=100)
    initial_s: float = Field(0.5, gt=0)
    max_backoff_s: float = Field(10.0, gt=0)
    deadline_s: float = Field(120.0, gt=0)


class Peer(BaseModel):
    """Another host, as a migration reaches it."""

    libvirt_uri: str = Field(description="its libvirtd, e.g. qemu+tls://host-b/system")
    migration_uri: str | None = Field(
        None, description="where the migration stream goes (tcp://10.0.0.2); None: libvirt's"
    )
    tls: bool = Field(False, description="QEMU's native TLS for the migration stream")


class TracingSettings(BaseModel):
    """OpenTelemetry tracing (docs/operations.md, Tracing): off by default. The standard
    OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, _PROTOCOL, OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*) apply where these leave a
    value unset."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="make spans and export them over OTLP")
    otlp_endpoint: str | None = Field(
        None,
        description="collector URL (grpc: http://collector:4317; http/protobuf:"
        " http://collector:4318, /v1/traces added); None: OTEL_EXPORTER_OTLP_* or the default",
    )
    protocol: Literal["grpc", "http/protobuf"] | None = Field(
        None, description="OTLP transport; None: OTEL_EXPORTER_OTLP_PROTOCOL or http/protobuf"
    )
    service_name: str = Field("vmworker", description="resource service.name")


class FleetSettings(BaseModel):
    """The fleet server (`vmworker fleet serve`): its store, where it listens, its action token."""

    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the store; None: sqlite:///<state_dir>/fleet.db",
    )
    bind: str = Field("127.0.0.1", description="address the HTTP server listens on")
    port: int = Field(8470, ge=1, le=65535, description="port of the HTTP server")
    token: str | None = Field(
        None, description="bearer token that allows actions (replay, drain); None: no actions"
    )
    token_name: str = Field("operator", description="who the token is, in the audit table")


class Settings(BaseSettings):
    """Everything the worker and the CLI read. Field names are the TOML keys;
    each one is also `VMWORKER_<NAME>` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="VMWORKER_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = Field("localhost", description="this host's id: the routing key of its queue")
    broker: str = Field(
        "amqp://guest:guest@localhost:5672//",
        description="broker URL; several separated by ';' fail over in order",
    )
    libvirt_uri: str = "qemu:///system"
    hooks_root: Path = Field(default_factory=default_hooks_root)
    state_dir: Path = Path("/var/lib/vmworker")
    prefix: str = Field("vm", description="name prefix of exchanges and queues (vm.ops, vm.events)")
    concurrency: int = Field(8, ge=1, le=256, description="operations run at once (distinct VMs)")
    prefetch: int = Field(0, ge=0, description="unacked messages held; 0 = 4 x concurrency")
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    delivery_limit: int = Field(5, ge=1, description="x-delivery-limit of the host queue")
    hook_timeout: float = Field(30.0, gt=0, description="seconds one hook script may run")
    hook_output_limit: int = Field(4096, ge=256)
    hook_prewarm: bool = Field(True, description="run Python hook scripts in a pre-forked runner")
    inproc_hooks: bool = True
    allow_raw_xml: bool = False
    storage_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    allowed_publishers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="user_id values accepted; empty accepts any"
    )
    heartbeat_interval: float = Field(30.0, gt=0, description="seconds between host heartbeats")
    inventory_interval: float = Field(
        3600.0, gt=0, description="seconds between full inventory snapshots (host.inventory)"
    )
    amqp_heartbeat: int = Field(30, ge=0, description="AMQP heartbeat (seconds)")
    ops_log_max_age: str = Field("7D", description="retention of the vm.ops.log stream")
    events_log_max_age: str = Field("7D", description="retention of the vm.events.log stream")
    ops_log_max_bytes: int = Field(
        5 * 10**9, ge=1, description="size limit of the vm.ops.log stream (bytes)"
    )
    events_log_max_bytes: int = Field(
        20 * 10**9, ge=1, description="size limit of the vm.events.log stream (bytes)"
    )
    stream_max_segment_bytes: int | None = Field(
        None,
        ge=1,
        description="segment size of both streams (bytes); the broker's default (500 MB) "
        "when unset; old data goes a whole segment at a time",
    )
    journal_retention_days: float = Field(7.0, gt=0)
    monitor_offline_after: float = Field(
        3600.0, ge=0, description="`vmworker monitor` hides hosts offline longer (seconds)"
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus port; 0 = off")
    metrics_address: str = Field(
        "127.0.0.1", description="address the metrics port listens on; 0.0.0.0 = all"
    )
    ssl_ca: Path | None = None
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    login_method: Literal["AMQPLAIN", "PLAIN", "EXTERNAL"] | None = Field(
        None, description="SASL mechanism; EXTERNAL = the client certificate names the user"
    )
    declare_shared: bool = Field(
        True,
        description="declare the shared exchanges and streams at start; false where "
        "`vmworker broker setup` made them and this host's broker user may not",
    )
    retry: dict[str, RetryPolicy] = Field(default_factory=lambda: {"default": RetryPolicy()})
    peers: dict[str, Peer] = Field(
        default_factory=dict, description="host id -> how a migration reaches it"
    )
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    fleet_url: str | None = Field(
        None, description="fleet server URL: monitor and history ask it, not the streams"
    )
    log_level: str = "info"

    @field_validator("host")
    @classmethod
    def _host_is_a_routing_word(cls, v: str) -> str:
        if not HOST_RE.match(v):
            raise ValueError("host id must match [A-Za-z0-9_-]+ (no dots)")
        return v

    @field_validator("hooks_root")
    @classmethod
    def _hooks_root_is_absolute(cls, v: Path) -> Path:
        # resolved once, here: scripts run with their hook directory as cwd
        return Path(os.path.abspath(v))

    @field_validator("storage_roots", "allowed_publishers", mode="before")
    @classmethod
    def _split_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.lstrip().startswith("["):
                return json.loads(v)
            return [p for p in (s.strip() for s in v.split(",")) if p]
        return v

    # -- derived names ---------------------------------------------------------------
    @property
    def broker_urls(self) -> list[str]:
        return [u.strip() for u in self.broker.split(";") if u.strip()]

    @property
    def effective_prefetch(self) -> int:
        return self.prefetch or 4 * self.concurrency

    def retry_policy(self, op: str) -> RetryPolicy:
        return self.retry.get(op) or self.retry.get("default") or RetryPolicy()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config: Path | None = None, **flags: Any) -> Settings:
    """Settings from the TOML file (`config`, else $VMWORKER_CONFIG, else the default path if it
    exists), the environment, then `flags` (None values are ignored)."""
    path = config or (
        Path(os.environ["VMWORKER_CONFIG"]) if "VMWORKER_CONFIG" in os.environ else None
    )
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    cls: type[Settings] = Settings
    if path is not None:
        cls = type(
            "FileSettings",
            (Settings,),
            {"model_config": {**Settings.model_config, "toml_file": path}},
        )
    return cls(**{k: v for k, v in flags.items() if v is not None})
