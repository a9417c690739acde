"""An operation message's body and headers as the client publishes them: the body from its
parts or from a typed message (with its secrets' real values), its op read back from raw bytes,
and the W3C trace context headers."""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from handlers.message import OpMessage, secret_paths


def message_body(
    op: str,
    vm: Mapping[str, Any],
    params: Mapping[str, Any] | None,
    custom: Mapping[str, str] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"version": 1, "op": op, "vm": dict(vm)}
    if params:
        body["params"] = dict(params)
    if custom:
        body["custom"] = dict(custom)
    return body


def op_of(raw: bytes) -> str | None:
    with contextlib.suppress(ValueError):
        doc = json.loads(raw)
        if isinstance(doc, dict) and isinstance(doc.get("op"), str):
            from worker.messages import OP_MODELS

            op = str(doc["op"])
            return op if op in OP_MODELS else "invalid"
    return "invalid"


def dump_message(msg: OpMessage) -> dict[str, Any]:
    """A typed message as its JSON body, with its secrets' real values (what the worker must
    receive; a plain JSON dump would mask them)."""
    doc: dict[str, Any] = msg.model_dump(mode="json", exclude_unset=True)
    for path in secret_paths(type(msg)):
        value: Any = msg
        node: Any = doc
        for i, name in enumerate(path):
            value = getattr(value, name, None)
            if i < len(path) - 1:
                node = node.get(name) if isinstance(node, dict) else None
        if isinstance(value, SecretStr) and isinstance(node, dict) and path[-1] in node:
            node[path[-1]] = value.get_secret_value()
    return doc


def trace_headers(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """W3C trace context headers: the given ones, else the current OpenTelemetry context's
    (when the API package is installed and a span is current), else none."""
    if traceparent:
        return {"traceparent": traceparent, **({"tracestate": tracestate} if tracestate else {})}
    try:
        propagate = importlib.import_module("opentelemetry.propagate")
    except ImportError:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: carrier[k] for k in ("traceparent", "tracestate") if k in carrier}
