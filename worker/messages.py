"""Operation messages (control plane -> host): one pydantic model per op, parsed in one place."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from handlers.errors import OpError, validation
from handlers.spec import BandwidthSpec, DiskSpec, NicSpec, VmSpec
from worker.hooks import CustomPropertyError, validate_custom

MESSAGE_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VmRef(_Strict):
    """An existing domain, named by uuid (the name is informative)."""

    uuid: UUID
    name: str | None = None


def _ref_or_spec(v: Any) -> str:
    if isinstance(v, dict):
        return "ref" if set(v) <= {"uuid", "name"} else "spec"
    return "spec" if isinstance(v, VmSpec) else "ref"


VmRefOrSpec = Annotated[
    Annotated[VmRef, Tag("ref")] | Annotated[VmSpec, Tag("spec")], Discriminator(_ref_or_spec)
]


class NoParams(_Strict):
    pass


class StartParams(_Strict):
    paused: bool = Field(False, description="start with the CPUs paused")


class ShutdownParams(_Strict):
    timeout: float = Field(60.0, gt=0, le=3600, description="seconds to wait for the guest")
    force: bool = Field(
        False, description="destroy the domain if it is still running after timeout"
    )


class DestroyParams(_Strict):
    graceful: bool = Field(False, description="SIGTERM QEMU only, never SIGKILL")


class UndefineParams(_Strict):
    keep_nvram: bool = False
    destroy: bool = Field(False, description="destroy a running domain first")


class _Op(_Strict):
    op: str
    version: Literal[1] = 1
    vm: VmRef
    params: NoParams = Field(default_factory=NoParams)
    custom: dict[str, str] = Field(default_factory=dict, description="custom properties for hooks")

    @field_validator("custom")
    @classmethod
    def _custom_is_safe(cls, v: dict[str, str]) -> dict[str, str]:
        validate_custom(v)
        return v

    @property
    def vm_uuid(self) -> str:
        return str(self.vm.uuid)

    @property
    def vm_name(self) -> str | None:
        return self.vm.name


class DefineVm(_Op):
    op: Literal["define_vm"]
    vm: VmSpec  # type: ignore[assignment]


class StartVm(_Op):
    op: Literal["start_vm"]
    vm: VmRefOrSpec  # type: ignore[assignment]
    params: StartParams = Field(default_factory=StartParams)  # type: ignore[assignment]


class ShutdownVm(_Op):
    op: Literal["shutdown_vm"]
    params: ShutdownParams = Field(default_factory=ShutdownParams)  # type: ignore[assignment]


class DestroyVm(_Op):
    op: Literal["destroy_vm"]
    params: DestroyParams = Field(default_factory=DestroyParams)  # type: ignore[assignment]


class RebootVm(_Op):
    op: Literal["reboot_vm"]


class PauseVm(_Op):
    op: Literal["pause_vm"]


class ResumeVm(_Op):
    op: Literal["resume_vm"]


class UndefineVm(_Op):
    op: Literal["undefine_vm"]
    params: UndefineParams = Field(default_factory=UndefineParams)  # type: ignore[assignment]


class _DeviceParams(_Strict):
    live: bool | None = Field(None, description="change the running domain (default: if running)")
    persistent: bool = Field(True, description="change the persistent definition too")


class AttachDiskParams(_DeviceParams):
    disk: DiskSpec


class _DetachParams(_DeviceParams):
    wait_s: float = Field(10.0, gt=0, le=600, description="how long the guest may take to let go")


class DetachDiskParams(_DetachParams):
    target: str = Field(pattern=r"^(vd|sd|hd)[a-z]{1,3}$", description="guest device, e.g. vdb")


class AttachNicParams(_DeviceParams):
    nic: NicSpec


class DetachNicParams(_DetachParams):
    mac: str = Field(pattern=r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")

    @field_validator("mac")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


class UpdateCdromParams(_DeviceParams):
    device: Literal["cdrom"]
    target: str = Field(pattern=r"^(sd|hd)[a-z]{1,3}$")
    path: str | None = Field(None, description="ISO to insert; null ejects the media")


class UpdateNicParams(_DeviceParams):
    device: Literal["nic"]
    mac: str = Field(pattern=r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")
    link_state: Literal["up", "down"] | None = None
    bandwidth: BandwidthSpec | None = None


class SetVcpusParams(_DeviceParams):
    count: int = Field(ge=1, le=512)


class SetMemoryParams(_DeviceParams):
    memory_mib: int = Field(ge=16, description="the new total; growing hotplugs a DIMM")
    node: int = Field(0, ge=0, description="guest NUMA node of a hotplugged DIMM")


class AttachDisk(_Op):
    op: Literal["attach_disk"]
    params: AttachDiskParams  # type: ignore[assignment]


class DetachDisk(_Op):
    op: Literal["detach_disk"]
    params: DetachDiskParams  # type: ignore[assignment]


class AttachNic(_Op):
    op: Literal["attach_nic"]
    params: AttachNicParams  # type: ignore[assignment]


class DetachNic(_Op):
    op: Literal["detach_nic"]
    params: DetachNicParams  # type: ignore[assignment]


class UpdateDevice(_Op):
    op: Literal["update_device"]
    params: Annotated[  # type: ignore[assignment]
        UpdateCdromParams | UpdateNicParams, Field(discriminator="device")
    ]


class SetVcpus(_Op):
    op: Literal["set_vcpus"]
    params: SetVcpusParams  # type: ignore[assignment]


class SetMemory(_Op):
    op: Literal["set_memory"]
    params: SetMemoryParams  # type: ignore[assignment]


OP_MODELS: dict[str, type[_Op]] = {
    m.model_fields["op"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in (
        DefineVm,
        StartVm,
        ShutdownVm,
        DestroyVm,
        RebootVm,
        PauseVm,
        ResumeVm,
        UndefineVm,
        AttachDisk,
        DetachDisk,
        AttachNic,
        DetachNic,
        UpdateDevice,
        SetVcpus,
        SetMemory,
    )
}


def register_op(model: type[_Op]) -> None:
    """Add an op model (handler families that bring their own ops call this at import)."""
    OP_MODELS[model.model_fields["op"].annotation.__args__[0]] = model  # type: ignore[union-attr]


def peek(body: bytes) -> dict[str, Any]:
    """Best-effort op and vm uuid of a body that may be invalid, for the fail event."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(doc, dict):
        return {}
    vm: dict[str, Any] = doc["vm"] if isinstance(doc.get("vm"), dict) else {}
    op = doc.get("op")
    return {
        "op": op if isinstance(op, str) and op in OP_MODELS else None,
        "vm_uuid": vm.get("uuid") if isinstance(vm.get("uuid"), str) else None,
        "vm_name": vm.get("name") if isinstance(vm.get("name"), str) else None,
    }


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        parts.append(f"{loc or 'body'}: {e['msg']}")
    more = len(err.errors()) - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def parse_operation(body: bytes, *, max_bytes: int) -> _Op:
    """The operation in `body`, or an OpError(validation) saying exactly what is wrong."""
    if len(body) > max_bytes:
        raise validation(f"body is {len(body)} bytes, over the {max_bytes}-byte limit", "too_large")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise validation(f"body is not JSON: {exc}", "not_json") from None
    if not isinstance(doc, dict):
        raise validation(f"body is JSON {type(doc).__name__}, not an object", "not_object")
    if doc.get("version", MESSAGE_VERSION) != MESSAGE_VERSION:
        raise validation(f"unsupported message version {doc.get('version')!r}", "bad_version")
    op = doc.get("op")
    model = OP_MODELS.get(op) if isinstance(op, str) else None
    if model is None:
        known = ", ".join(sorted(OP_MODELS))
        raise validation(f"unknown op {op!r} (known: {known})", "unknown_op")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        code = "bad_custom" if any(e["loc"][:1] == ("custom",) for e in exc.errors()) else "invalid"
        raise validation(_describe(exc), code) from None
    except CustomPropertyError as exc:  # raised outside pydantic's wrapping
        raise validation(str(exc), "bad_custom") from None


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every op message, for control-plane authors."""
    return {name: model.model_json_schema() for name, model in sorted(OP_MODELS.items())}


__all__ = ["OP_MODELS", "OpError", "json_schemas", "parse_operation", "peek", "register_op"]
