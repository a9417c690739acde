"""Hypothesis strategies drawn from a JSON Schema (the subset `vmworker schema` uses), and a
validator with JSON Schema's own regex semantics, for tests that compare the schema's verdict
with the worker's.

A keyword the generator does not know fails loudly rather than being ignored, so a schema that
grows a new keyword cannot make the property test quietly weaker.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
from hypothesis import strategies as st
from jsonschema import ValidationError

_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "x-rules",
    "x-kind",
    "examples",
    "$comment",
    "writeOnly",
    "format",  # an annotation in 2020-12; the schema has only `password` (a secret)
}
_KNOWN = _ANNOTATIONS | {
    "$schema",
    "$id",
    "$defs",
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "items",
    "maxItems",
    "minItems",
    "maxProperties",
    "uniqueItems",
    "anyOf",
    "oneOf",
    "not",
    "enum",
    "const",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
}
_LOOKAHEAD = re.compile(r"\(\?![^()]*\)")


def ecma(pattern: str) -> str:
    """A JSON Schema (ECMA-262) pattern as Python `re`: `$` ends the string, never before a
    final newline."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        return pattern[:-1] + r"\Z"
    return pattern


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string") and not re.search(ecma(pattern), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


_CHECKED: set[str] = set()


def check_schema(schema: dict[str, Any]) -> None:
    """Raise unless `schema` is valid by the 2020-12 meta-schema. The check is slow (a second
    or so for the messages' schema): it is made once per process for equal schemas."""
    text = json.dumps(schema, sort_keys=True)
    if text not in _CHECKED:
        jsonschema.Draft202012Validator.check_schema(schema)
        _CHECKED.add(text)


def validator(schema: dict[str, Any]) -> Any:
    """A validator of `schema`, once the schema itself is checked (`check_schema`)."""
    check_schema(schema)
    return Validator(schema)


def _strings(s: dict[str, Any]) -> st.SearchStrategy[str]:
    lo, hi = s.get("minLength", 0), s.get("maxLength")
    pattern = s.get("pattern")
    if pattern is None:
        return st.text(min_size=lo, max_size=min(hi if hi is not None else 12, 12))
    bare = _LOOKAHEAD.sub("", pattern)  # hypothesis cannot draw from lookaheads: filtered below
    out = st.from_regex(ecma(bare), fullmatch=True)
    return out.filter(
        lambda v: (
            lo <= len(v) <= (hi if hi is not None else len(v))
            and re.search(ecma(pattern), v) is not None
        )
    )


def _numbers(s: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    lo = s.get("minimum", s.get("exclusiveMinimum"))
    hi = s.get("maximum", s.get("exclusiveMaximum"))
    if integer:
        lo = -(2**40) if lo is None else int(lo) + ("exclusiveMinimum" in s)
        hi = 2**40 if hi is None else int(hi) - ("exclusiveMaximum" in s)
        return st.integers(lo, hi)
    return st.floats(
        min_value=lo,
        max_value=hi,
        exclude_min="exclusiveMinimum" in s,
        exclude_max="exclusiveMaximum" in s,
        allow_nan=False,
        allow_infinity=False,
    ) | _numbers(s, True).filter(lambda v: (lo is None or v > lo) and (hi is None or v < hi))


class Generator:
    """`strategy(schema)` draws instances of `schema`; each is checked by the schema's own
    validator too, so what the generator cannot express (`not`, lookaheads) is filtered."""

    def __init__(self, root: dict[str, Any], max_depth: int = 6) -> None:
        self.root = root
        self.max_depth = max_depth
        self.check = validator(root)

    def strategy(self) -> st.SearchStrategy[Any]:
        return self._of(self.root, 0).filter(self.check.is_valid)

    def _resolve(self, ref: str) -> dict[str, Any]:
        assert ref.startswith("#/$defs/"), ref
        found: dict[str, Any] = self.root["$defs"][ref.split("/")[-1]]
        return found

    def _of(self, s: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
        unknown = set(s) - _KNOWN
        assert not unknown, f"the generator does not know {unknown}"
        if "$ref" in s:
            return st.deferred(lambda: self._of(self._resolve(s["$ref"]), depth + 1))
        if "const" in s:
            return st.just(s["const"])
        if "enum" in s:
            return st.sampled_from(s["enum"])
        for key in ("anyOf", "oneOf"):
            if key in s:
                subs = [self._of(sub, depth) for sub in s[key]]
                branch = Validator({"$defs": self.root.get("$defs", {}), **s})
                return st.one_of(subs).filter(branch.is_valid)
        kind = s.get("type")
        if isinstance(kind, list):
            return st.one_of([self._of({**s, "type": k}, depth) for k in kind])
        if kind == "null":
            return st.none()
        if kind == "boolean":
            return st.booleans()
        if kind in ("integer", "number"):
            return _numbers(s, kind == "integer")
        if kind == "string":
            return _strings(s)
        if kind == "array":
            hi = min(s.get("maxItems", 3), 3 if depth < self.max_depth else 0)
            lo = s.get("minItems", 0)
            items = self._of(s.get("items", {"type": "null"}), depth + 1)
            if s.get("uniqueItems"):
                return st.lists(items, min_size=lo, max_size=max(lo, hi), unique_by=repr)
            return st.lists(items, min_size=lo, max_size=max(lo, hi))
        if kind == "object":
            return self._object(s, depth)
        raise AssertionError(f"no type in {s}")

    def _object(self, s: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
        props: dict[str, Any] = s.get("properties", {})
        required = set(s.get("required", ()))
        fixed = {k: self._of(v, depth + 1) for k, v in props.items() if k in required}
        deep = depth >= self.max_depth
        optional = {
            k: self._of(v, depth + 1) for k, v in props.items() if k not in required and not deep
        }
        extra = s.get("additionalProperties")
        if isinstance(extra, dict) and not props:  # a map: names from propertyNames
            names = self._of({"type": "string", **s.get("propertyNames", {})}, depth)
            return st.dictionaries(names, self._of(extra, depth + 1), max_size=3)
        return st.fixed_dictionaries(fixed, optional=optional)
