"""Operation messages (control plane -> host), parsed in one place: a body becomes the model its
op declared with its handler (`handlers.operations`), or an OpError(validation) saying why not."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any, Union
from uuid import UUID

from pydantic import (
    BaseModel,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from handlers.errors import OpError, validation
from handlers.message import MESSAGE_VERSION, OpMessage, secret_paths
from handlers.operations import OPERATIONS
from handlers.spec import RULES, VmSpec
from worker.hooks import CustomPropertyError, validate_custom
from worker.hooks.custom import NAME_RE, RESERVED_NAMES, RESERVED_PREFIXES

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
MESSAGE_SCHEMA_ID = "urn:vmworker:schema:message:1"


def _custom_is_safe(cls: type[OpMessage], v: dict[str, str]) -> dict[str, str]:
    validate_custom(v)
    return v


_CUSTOM_RULE: Any = field_validator("custom")(_custom_is_safe)


def _device_customs(msg: OpMessage) -> Iterator[tuple[str, Mapping[str, str]]]:
    """(where, custom) of every device's own custom properties: the spec's devices, and a
    device given in `params` (a hotplug's)."""
    if isinstance(msg.vm, VmSpec):
        for where, custom in msg.vm.device_customs():
            yield f"vm.{where}", custom
    for name in type(msg.params).model_fields:
        custom = getattr(getattr(msg.params, name), "custom", None)
        if isinstance(custom, Mapping) and custom:
            yield f"params.{name}.custom", custom


def _device_customs_are_safe(msg: OpMessage) -> OpMessage:
    for where, custom in _device_customs(msg):
        try:
            validate_custom(custom)
        except CustomPropertyError as exc:
            raise CustomPropertyError(exc.key, f"{exc.reason} (in {where})") from None
    return msg


_DEVICE_CUSTOM_RULE: Any = model_validator(mode="after")(_device_customs_are_safe)


class _Models(Mapping[str, type[OpMessage]]):
    """The message model of every declared operation, by op name, read live from `OPERATIONS`.

    Each is the handler's model plus the hook engine's rule on custom properties (handlers know
    nothing of hooks); same name and fields, so the JSON Schema is the handler model's.
    """

    def __init__(self) -> None:
        self._built: dict[type[OpMessage], type[OpMessage]] = {}

    def __getitem__(self, name: str) -> type[OpMessage]:
        model = OPERATIONS[name].message
        if model not in self._built:
            self._built[model] = create_model(
                model.__name__,
                __base__=model,
                __doc__=model.__doc__,
                __module__=model.__module__,
                __validators__={
                    "_custom_is_safe": _CUSTOM_RULE,
                    "_device_customs_are_safe": _DEVICE_CUSTOM_RULE,
                },
            )
        return self._built[model]

    def __iter__(self) -> Iterator[str]:
        return iter(OPERATIONS)

    def __len__(self) -> int:
        return len(OPERATIONS)


OP_MODELS: Mapping[str, type[OpMessage]] = _Models()


def peek(body: bytes) -> dict[str, Any]:
    """What the fail event of a message that could not be parsed may say about it: only values
    checked here, never one copied as it came (`op` if it names a known operation, `vm_uuid` if
    it is a UUID, canonical); the VM's name is not read."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    if not isinstance(doc, dict):
        return {}
    seen: dict[str, Any] = {}
    op = doc.get("op")
    if isinstance(op, str) and op in OP_MODELS:
        seen["op"] = op
    vm = doc.get("vm")
    raw = vm.get("uuid") if isinstance(vm, dict) else None
    if isinstance(raw, str) and len(raw) <= 64:  # the longest spelling UUID() reads is 45
        with contextlib.suppress(ValueError):
            seen["vm_uuid"] = str(UUID(raw))
    return seen


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        parts.append(f"{loc or 'body'}: {e['msg']}")
    more = len(err.errors()) - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _is_custom_error(e: Any) -> bool:
    return e["loc"][:1] == ("custom",) or isinstance(
        e.get("ctx", {}).get("error"), CustomPropertyError
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _number(text: str) -> float | int:
    """A JSON number with a fraction or exponent; an integral one (`4.0`, `1e3`) is an integer,
    as JSON Schema counts it."""
    value = float(text)
    return int(value) if value.is_integer() else value


def loads(body: bytes | str) -> Any:
    """JSON as the contract reads it: no NaN or Infinity, integral numbers are integers."""
    return json.loads(body, parse_constant=_no_constant, parse_float=_number)


def parse_operation(body: bytes, *, max_bytes: int) -> OpMessage:
    """The operation in `body`, or an OpError(validation) saying exactly what is wrong."""
    if len(body) > max_bytes:
        raise validation(f"body is {len(body)} bytes, over the {max_bytes}-byte limit", "too_large")
    try:
        doc = loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise validation(f"body is not JSON: {exc}", "not_json") from None
    if not isinstance(doc, dict):
        raise validation(f"body is JSON {type(doc).__name__}, not an object", "not_object")
    version = doc.get("version", MESSAGE_VERSION)
    if type(version) is not int or version != MESSAGE_VERSION:  # `true` is not 1
        raise validation(f"unsupported message version {doc.get('version')!r}", "bad_version")
    op = doc.get("op")
    model = OP_MODELS.get(op) if isinstance(op, str) else None
    if model is None:
        known = ", ".join(sorted(OP_MODELS))
        raise validation(f"unknown op {op!r} (known: {known})", "unknown_op")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        code = "bad_custom" if any(_is_custom_error(e) for e in exc.errors()) else "invalid"
        raise validation(_describe(exc), code) from None
    except CustomPropertyError as exc:  # raised outside pydantic's wrapping
        raise validation(str(exc), "bad_custom") from None


def redact_body(doc: dict[str, Any]) -> dict[str, Any]:
    """An operation message's body as it may be shown: each secret field of its op (a
    `SecretStr`: the password of `set_ticket`) that is present replaced by `***`, whether or
    not the rest of the body is valid."""
    op = doc.get("op")
    if not isinstance(op, str) or op not in OPERATIONS:
        return doc
    out = json.loads(json.dumps(doc))
    for path in secret_paths(OPERATIONS[op].message):
        node: Any = out
        for name in path[:-1]:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(path[-1]) is not None:
            node[path[-1]] = "***"
    return out


HOST_CHECKS = (
    "Checked by the host, not by this schema: the body's size (max_body_bytes, 1 MiB by"
    " default), the AMQP properties and headers (message_id, x-deadline, user_id), the rules"
    " across fields each object lists in x-rules (docs/spec.md), and what depends on the host:"
    " storage roots, raw XML allowed, the VM's state."
)

# custom properties: what worker/hooks/custom.py checks, as JSON Schema
_CUSTOM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "custom properties for hooks (environment variables of hook scripts)",
    "propertyNames": {
        "pattern": NAME_RE.pattern,
        "not": {
            "anyOf": [
                {"enum": sorted(RESERVED_NAMES)},
                {"pattern": "^(" + "|".join(RESERVED_PREFIXES) + ")"},
            ]
        },
    },
    "additionalProperties": {"type": "string", "pattern": "^[^\\u0000]*$"},
    "default": {},
}


def _custom_schema(declared: dict[str, Any]) -> dict[str, Any]:
    """A `custom` map's schema: its declared bounds and the hook engine's rules on names."""
    out = {**_CUSTOM_SCHEMA, **{k: v for k, v in declared.items() if k != "propertyNames"}}
    out["propertyNames"] = {**declared.get("propertyNames", {}), **_CUSTOM_SCHEMA["propertyNames"]}
    declared_values = declared.get("additionalProperties")
    values = declared_values if isinstance(declared_values, dict) else {}
    # a declared pattern (no control characters) is stricter than "no NUL": it wins
    out["additionalProperties"] = {**_CUSTOM_SCHEMA["additionalProperties"], **values}
    return out


def _rules_of(cls: type[BaseModel]) -> list[str]:
    """The cross-field rules a model's objects are checked against, one line each."""
    out = []
    for base in cls.__mro__:
        for check in RULES.get(base.__name__, ()):
            out.append((check.__doc__ or check.__name__).split("\n\n")[0].replace("\n", ""))
    return [" ".join(r.split()) for r in out]


def _models(cls: type[BaseModel], seen: dict[str, type[BaseModel]]) -> None:
    if cls.__name__ in seen:
        return
    seen[cls.__name__] = cls
    for f in cls.model_fields.values():
        for t in _types(f.annotation):
            _models(t, seen)


def _types(tp: Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [t for arg in getattr(tp, "__args__", ()) or () for t in _types(arg)]


def _finish(schema: dict[str, Any], models: Sequence[type[BaseModel]], sid: str) -> dict[str, Any]:
    """The contract's form of pydantic's schema: standard 2020-12 keywords only (no OpenAPI
    `discriminator`), custom properties as the hook engine checks them, rules listed."""
    by_name: dict[str, type[BaseModel]] = {}
    for m in models:
        _models(m, by_name)
    defs = schema.get("$defs", {})
    nodes = [schema, *defs.values()]
    for node in nodes:
        model = by_name.get(node.get("title", ""))
        if model is None:
            continue
        rules = _rules_of(model)
        if rules:
            node["x-rules"] = rules
        if "custom" in node.get("properties", {}):  # the message's, and each device's own
            node["properties"]["custom"] = _custom_schema(node["properties"]["custom"])
    _strip(schema)
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": sid, "description": HOST_CHECKS, **schema}


def _strip(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _strip(item)
    elif isinstance(node, dict):
        if isinstance(node.get("discriminator"), dict):
            del node["discriminator"]
        pattern_props = node.get("patternProperties")
        if isinstance(pattern_props, dict) and len(pattern_props) == 1:
            # a dict with constrained keys: no other key is allowed (JSON Schema's default is any)
            ((names, values),) = pattern_props.items()
            del node["patternProperties"]
            node["propertyNames"] = {"pattern": names}
            node["additionalProperties"] = values
        for key, value in node.items():
            if key in ("properties", "$defs", "patternProperties"):
                for sub in value.values():
                    _strip(sub)
            elif key not in ("default", "const", "enum", "examples"):
                _strip(value)


def message_schema(op: str | None = None) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one op's messages, or of every op's (one of them)."""
    if op is not None:
        model = OP_MODELS[op]
        return _finish(model.model_json_schema(), [model], f"{MESSAGE_SCHEMA_ID}:{op}")
    models = [OP_MODELS[name] for name in sorted(OP_MODELS)]
    union: Any = Annotated[Union[tuple(models)], Field(discriminator="op")]  # noqa: UP007
    schema = TypeAdapter(union).json_schema()
    schema["title"] = "operation message"
    return _finish(schema, models, MESSAGE_SCHEMA_ID)


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every op message, by op name."""
    return {name: message_schema(name) for name in sorted(OP_MODELS)}


__all__ = [
    "OP_MODELS",
    "OpError",
    "json_schemas",
    "loads",
    "message_schema",
    "parse_operation",
    "peek",
    "redact_body",
]
