"""What every operation message holds (`OpMessage`): op, version, vm, params, custom.

Each family of handlers declares its own ops' models (their `op` literal, `vm` form and
`params`) next to the functions that run them; `worker/messages.py` parses bodies into them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Discriminator, Field, SecretStr, Tag

from handlers.scalars import Uuid
from handlers.spec import VmSpec

MESSAGE_VERSION = 1


class Strict(BaseModel):
    """Unknown fields anywhere are an error, not ignored; JSON types are taken as sent ("4" is
    not an integer), as the JSON Schema says."""

    model_config = ConfigDict(extra="forbid", strict=True)


class VmRef(Strict):
    """An existing domain, named by uuid (the name is informative)."""

    uuid: Uuid
    name: str | None = None


class FullSpec(VmSpec):
    """A spec where a reference could also stand: `vcpus` and `memory_mib` are required, so
    `{uuid, name}` is always the reference and never a spec of defaults."""

    vcpus: int = Field(ge=1, le=255, description="vCPUs at start.")
    memory_mib: int = Field(ge=16, le=16 * 1024 * 1024, description="Memory at start, MiB.")


def _ref_or_spec(v: Any) -> str:
    if isinstance(v, dict):
        return "ref" if set(v) <= {"uuid", "name"} else "spec"
    return "spec" if isinstance(v, VmSpec) else "ref"


# a reference has only `uuid` (and `name`), a spec has `vcpus` and `memory_mib`: never both
VmRefOrSpec = Annotated[
    Annotated[VmRef, Tag("ref")] | Annotated[FullSpec, Tag("spec")], Discriminator(_ref_or_spec)
]


class NoParams(Strict):
    pass


class OpMessage(Strict):
    """The fields every op shares; an op's model narrows `op` to its name's literal."""

    op: str
    version: Literal[1] = 1
    vm: VmRef
    params: NoParams = Field(default_factory=NoParams)
    # names and values follow the hook engine's rules, checked where bodies are parsed
    custom: dict[str, str] = Field(default_factory=dict, description="custom properties for hooks")

    @classmethod
    def op_name(cls) -> str:
        """The op this model is for: the value of its `op` literal."""
        names: tuple[Any, ...] = getattr(cls.model_fields["op"].annotation, "__args__", ())
        if len(names) != 1 or not isinstance(names[0], str):
            raise TypeError(f"{cls.__name__}.op must be a Literal of one op name")
        return str(names[0])

    def secrets(self) -> list[str]:
        """The values of this message's secret fields (`SecretStr`): what no report may show."""
        out = []
        for path in secret_paths(type(self)):
            value: Any = self
            for name in path:
                value = getattr(value, name, None)
            if isinstance(value, SecretStr) and value.get_secret_value():
                out.append(value.get_secret_value())
        return out

    def event_data(self) -> dict[str, Any]:
        """What every event of this request carries besides the common fields (e.g. a
        migration's destination)."""
        return {}

    @property
    def vm_uuid(self) -> str:
        return self.vm.uuid

    @property
    def vm_name(self) -> str | None:
        return self.vm.name


def _models_in(annotation: Any) -> list[Any]:
    """The types an annotation may hold: `X | None`, `Annotated[X, ...]` and unions unwrapped."""
    if get_origin(annotation) is Annotated:
        return _models_in(get_args(annotation)[0])
    if get_origin(annotation) is Union or type(annotation).__name__ == "UnionType":
        return [t for arg in get_args(annotation) for t in _models_in(arg)]
    return [annotation]


_SECRET_PATHS: dict[type[BaseModel], tuple[tuple[str, ...], ...]] = {}


def secret_paths(model: type[BaseModel]) -> tuple[tuple[str, ...], ...]:
    """The field paths of `model` that hold a `SecretStr` (`("params", "password")`)."""
    if model not in _SECRET_PATHS:
        _SECRET_PATHS[model] = _find_secrets(model)
    return _SECRET_PATHS[model]


def _find_secrets(model: type[BaseModel]) -> tuple[tuple[str, ...], ...]:
    out: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        for t in _models_in(info.annotation):
            if t is SecretStr:
                out.append((name,))
            elif isinstance(t, type) and issubclass(t, BaseModel):
                out += [(name, *p) for p in secret_paths(t)]
    return tuple(dict.fromkeys(out))
