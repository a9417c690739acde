"""The JSON Schemas of the AsyncAPI document (worker/asyncapi.py) as its parser reads them.

`to_draft07` converts one of the contract's 2020-12 schemas to draft-07: every `$defs` entry
becomes a `components.schemas` entry (the same name for the same model in every op; a clash is an
error), each `$ref` `#/$defs/X` becomes `#/components/schemas/X`, and `$schema`/`$id` are dropped.
A 2020-12-only keyword makes it fail rather than say something else than the schema.

`event_kinds` reads the kinds of event from the events' schema (worker/eventschema.py): one per
routing-key template, with a pattern of the CloudEvents `type` and the schema of `data`.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from worker.eventschema import event_schema

SCHEMAS = "#/components/schemas/"
# keywords of JSON Schema 2019-09/2020-12 that draft-07 does not have (or reads otherwise)
_NEWER_KEYWORDS = frozenset(
    {
        "prefixItems",
        "unevaluatedItems",
        "unevaluatedProperties",
        "dependentRequired",
        "dependentSchemas",
        "$anchor",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$recursiveAnchor",
        "$vocabulary",
        "minContains",
        "maxContains",
    }
)
# what an event type's pattern (worker/eventschema.py) says, segment by segment
_OP_WORD = "[a-z][a-z0-9_]*"
_ANY_WORD = "[A-Za-z0-9_-]+"
_LITERAL = re.compile(r"[a-z_]+")
_ALTERNATIVES = re.compile(r"\(([a-z_|]+)\)")


class SchemaConversionError(ValueError):
    """A schema this module cannot say in draft-07 as it is."""


def to_draft07(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """`schema` (2020-12) as the AsyncAPI parser reads it: its `$defs` moved into `schemas`
    (`components.schemas`), references to them rewritten, `$schema`/`$id` dropped."""
    out = copy.deepcopy(schema)
    out.pop("$schema", None)
    out.pop("$id", None)
    defs = out.pop("$defs", {})
    for name, sub in defs.items():
        sub = _rewrite(sub)
        if name in schemas and schemas[name] != sub:
            raise SchemaConversionError(f"two different schemas named {name!r}")
        schemas[name] = sub
    return _rewrite(out)


def _rewrite(node: Any, under: str | None = None) -> Any:
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if under in ("properties", "patternProperties"):  # names of fields, not keywords
            out[key] = _rewrite(value)
            continue
        if key in _NEWER_KEYWORDS or key == "$defs":
            raise SchemaConversionError(f"{key} has no draft-07 equivalent here")
        if key == "$ref":
            if not value.startswith("#/$defs/"):
                raise SchemaConversionError(f"a $ref outside $defs: {value}")
            out[key] = SCHEMAS + value.removeprefix("#/$defs/")
        elif key in ("default", "const", "enum", "examples"):
            out[key] = value
        else:
            out[key] = _rewrite(value, key)
    return out


# ---- events: kinds from worker/eventschema.py ------------------------------------------------


def event_kinds() -> list[dict[str, Any]]:
    """Every kind of event `event_schema()` names, one per routing-key template: `words`
    (after `<host>.`, `{op}`/`{state}` for parameters), `type` (a pattern of the CloudEvents
    `type`) and `data` (its schema)."""
    out = []
    for branch in event_schema()["oneOf"]:
        pattern = branch["properties"]["type"]["pattern"]
        data = branch["properties"]["data"]
        for words in _templates(pattern):
            out.append({"words": words, "type": _type_pattern(words), "data": data})
    return out


def _templates(pattern: str) -> list[list[str]]:
    """`^vmworker\\.host\\.(online|heartbeat)$` -> [["host", "online"], ["host", "heartbeat"]]."""
    if not (pattern.startswith("^vmworker\\.") and pattern.endswith("$")):
        raise SchemaConversionError(f"event type pattern {pattern!r}: not ^vmworker\\....$")
    options: list[list[str]] = [[]]
    segments = pattern.removeprefix("^vmworker\\.").removesuffix("$").split("\\.")
    for i, seg in enumerate(segments):
        if seg == _OP_WORD and i == 0:
            words = ["{op}"]
        elif seg == _ANY_WORD and i > 0 and _LITERAL.fullmatch(segments[i - 1]):
            words = ["{" + segments[i - 1] + "}"]  # state.{state}
        elif _LITERAL.fullmatch(seg):
            words = [seg]
        elif m := _ALTERNATIVES.fullmatch(seg):
            words = m.group(1).split("|")
        else:
            raise SchemaConversionError(
                f"event type pattern {pattern!r}: cannot read {seg!r} as a routing-key word"
                " (worker/asyncapi_schema.py knows an op, a word after a literal, literals and"
                " (a|b) alternatives)"
            )
        options = [[*o, w] for o in options for w in words]
    return options


def _type_pattern(words: list[str]) -> str:
    regex = {"{op}": _OP_WORD}
    parts = [regex.get(w, _ANY_WORD if w.startswith("{") else re.escape(w)) for w in words]
    return "^vmworker\\." + "\\.".join(parts) + "$"


def event_message_name(words: list[str]) -> str:
    if words[0] == "{op}":
        return "event_operation_" + "_".join(words[1:])
    return "event_" + "_".join(w.strip("{}") for w in words if w != "{" + words[0] + "}")
