"""Operation messages (control plane -> host), parsed in one place: a body becomes the model its
op declared with its handler (`handlers.operations`), or an OpError(validation) saying why not."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any
from uuid import UUID

from pydantic import ValidationError, create_model, field_validator, model_validator

from handlers.errors import OpError, validation
from handlers.message import MESSAGE_VERSION, OpMessage, secret_paths
from handlers.operations import OPERATIONS
from handlers.spec import VmSpec
from worker.hooks import CustomPropertyError, validate_custom


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


def parse_operation(body: bytes, *, max_bytes: int) -> OpMessage:
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


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every op message, for control-plane authors."""
    return {name: model.model_json_schema() for name, model in sorted(OP_MODELS.items())}


__all__ = ["OP_MODELS", "OpError", "json_schemas", "parse_operation", "peek", "redact_body"]
