"""Size limits of events (docs/protocol.md, Limits): every string cut to a documented length, the
whole event within `EVENT_MAX` bytes. `bound(event)` is applied where events are built
(`events.cloud_event`) and checked again by the encoder. `cut` and `cell` are shared with the
CLI views, which cut every value they show."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

FIELD_MAX = 1024  # characters: any string of an event not listed in TEXT_KEYS
TEXT_MAX = 8192  # characters: free text (hook output, stderr)
EVENT_MAX = 65536  # bytes: a whole event, encoded
MIN_CUT = 64  # shrinking a whole event never cuts a string shorter (uuids, sha256 stay whole)
MAX_CUT_PATHS = 20  # `data.cut` names at most this many paths
_RESERVE = 4096  # room left for `data.cut` itself when shrinking
TEXT_KEYS = frozenset({"stderr", "stderr_tail", "stdout_tail"})
XML_MAX = 49152  # characters: a domain XML an event hands to another host (migrations)
XML_KEYS = frozenset({"accepted_xml"})
TAIL_KEYS = frozenset({"stderr_tail", "stdout_tail"})  # the end of an output is what tells
_BUILT = frozenset({"specversion", "id", "source", "type", "time", "datacontenttype"})
# the identity of an event: never cut when shrinking (each is within FIELD_MAX already)
_KEEP = frozenset(
    {"op", "phase", "host", "request_id", "correlation_id", "replay_of", "cut", "inventory_digest"}
)
_ESSENTIAL = (
    *sorted(_KEEP),
    "vm",
    "state",
    "reason",
    "domain_state",
    "during_request",
    "duplicate",
    "original_event_id",
    "redelivered",
    "recovered",
    "attempt",
    "duration_ms",
    "noop",
    "interval_s",
    "worker",
    "queue_depth",
    "outbox",
    "operations_in_flight",
    "vms",
    "memory",
    "stopped_at",
)


def cut(text: str, limit: int, *, tail: bool = False) -> str:
    """`text` in at most `limit` characters: its start and `…[cut: N chars]` (N: its length
    before), or with `tail`, `[cut: N chars]…` and its end."""
    if len(text) <= limit:
        return text
    marker = f"[cut: {len(text)} chars]"
    if 2 * (len(marker) + 1) > limit:  # too short for the marker: an ellipsis says it
        return "…" + text[len(text) - limit + 1 :] if tail else text[: limit - 1] + "…"
    keep = limit - len(marker) - 1
    return f"{marker}…{text[len(text) - keep :]}" if tail else f"{text[:keep]}…{marker}"


def cell(value: object, limit: int = 80) -> str:
    """A value shown in a CLI view: one line, at most `limit` characters (cut with a marker)."""
    return cut(" ".join(str(value).split()), limit)


def bound(ev: dict[str, Any]) -> dict[str, Any]:
    """`ev` with every string within its limit and the whole within EVENT_MAX bytes. Returns
    `ev` itself when nothing had to be cut; else a copy whose `data.cut` lists what was cut
    (dotted paths, at most MAX_CUT_PATHS), the caller's objects left as they were."""
    if len(encode_plain(ev)) <= FIELD_MAX:
        # the common event: no string of it can be longer than its whole encoding (JSON's
        # escapes only lengthen), so none reaches a limit; one C call instead of a walk
        return ev
    cuts: list[str] = []
    out, estimate = _cap_fields(ev, cuts)
    if cuts or estimate > EVENT_MAX - _RESERVE:
        if len(encode_plain(out)) > EVENT_MAX - _RESERVE:
            out = _shrink(out, cuts)
        if cuts:
            out = _with_cuts(out, cuts)
    return out


def encode_plain(ev: dict[str, Any]) -> bytes:
    """Compact JSON, as events are published (events.encode bounds first)."""
    return json.dumps(ev, separators=(",", ":"), default=str).encode()


# -- every string within its limit -------------------------------------------------------------
def _cap_fields(ev: dict[str, Any], cuts: list[str]) -> tuple[dict[str, Any], int]:
    """(event with capped strings, an upper bound of its encoded size); copy on write."""
    out = ev
    size = 2
    for k, v in ev.items():
        if k in _BUILT and isinstance(v, str):
            size += len(k) + 6 * len(v) + 6
            continue
        nv, n = _cap(v, k, k, cuts)
        size += len(k) + n + 4
        if nv is not v:
            if out is ev:
                out = dict(ev)
            out[k] = nv
    return out, size


def _cap(node: Any, key: str, path: str, cuts: list[str]) -> tuple[Any, int]:
    if isinstance(node, str):
        limit = XML_MAX if key in XML_KEYS else TEXT_MAX if key in TEXT_KEYS else FIELD_MAX
        if len(node) > limit:
            cuts.append(path)
            node = cut(node, limit, tail=key in TAIL_KEYS)
        return node, (6 if node.isascii() else 12) * len(node) + 2
    if isinstance(node, dict):
        out: Any = node
        size = 2
        for k, v in node.items():
            sk = k if type(k) is str else str(k)
            n = _leaf(v)  # most values: no call, no path made
            if n < 0:
                nv, n = _cap(v, sk, f"{path}.{k}", cuts)
                if nv is not v:
                    if out is node:
                        out = dict(node)
                    out[k] = nv
            size += 12 * len(sk) + n + 4
        return out, size
    if isinstance(node, list | tuple):
        items = list(node)
        size = 2
        changed = False
        inner = f"{path}.*"
        for i, v in enumerate(items):
            n = _leaf(v)
            if n < 0:
                nv, n = _cap(v, key, inner, cuts)
                if nv is not v:
                    items[i], changed = nv, True
            size += n + 1
        return (items if changed else node), size
    if isinstance(node, int) and not -(10**18) < node < 10**18:
        return node, len(str(node))
    return node, 32  # a number, a bool, null, or what default=str makes of an object


def _leaf(v: Any) -> int:
    """What `_cap` would count for `v` when it certainly leaves `v` as it is (a string no limit
    cuts, null, a bool, a float, an int of up to 18 digits); -1 for anything else."""
    t = type(v)
    if t is str:
        return (6 if v.isascii() else 12) * len(v) + 2 if len(v) <= FIELD_MAX else -1
    if v is None or t is bool or t is float or (t is int and -(10**18) < v < 10**18):
        return 32
    return -1


# -- the whole event within EVENT_MAX ------------------------------------------------------------
Path = tuple[str | int, ...]


def _shrink(ev: dict[str, Any], cuts: list[str]) -> dict[str, Any]:
    """Cut hook output first (stdout, then stderr), then the longest strings, then the longest
    lists; as a last resort keep only the identity of the event."""
    target = EVENT_MAX - _RESERVE
    for select in (_is_stdout, _is_stderr, _is_free):
        longest = max((len(s) for p, s in _strings(ev, ()) if select(p)), default=0)
        if longest > MIN_CUT:
            n = _search(partial(_cap_strings, ev, select, cuts=None), MIN_CUT, longest, target)
            ev = _cap_strings(ev, select, n, cuts)
            if _size(ev) <= target:
                return ev
    longest = _longest_list(ev.get("data"))
    if longest:
        n = _search(partial(_cap_lists, ev, cuts=None), 0, longest, target)
        ev = _cap_lists(ev, n, cuts)
        if _size(ev) <= target:
            return ev
    data = ev["data"] if isinstance(ev.get("data"), dict) else {}
    cuts.append("data")
    return {**ev, "data": {k: data[k] for k in _ESSENTIAL if k in data}}


def _size(ev: dict[str, Any]) -> int:
    return len(encode_plain(ev))


def _search(make: Callable[[int], dict[str, Any]], lo: int, hi: int, target: int) -> int:
    """The largest n in [lo, hi) for which make(n) is within target; lo if none is."""
    best = lo
    lo, hi = lo + 1, hi - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if _size(make(mid)) <= target:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def _key(path: Path) -> str:
    """The dict key a value is under (a list item: its list's key)."""
    return next((p for p in reversed(path) if isinstance(p, str)), "")


def _is_stdout(path: Path) -> bool:
    return _key(path) == "stdout_tail"


def _is_stderr(path: Path) -> bool:
    return _key(path) == "stderr_tail"


def _is_free(path: Path) -> bool:
    """Any string of `data` but the event's identity and the vm's uuid."""
    return (
        len(path) > 1
        and path[0] == "data"
        and not (len(path) == 2 and path[1] in _KEEP)
        and path[1:] != ("vm", "uuid")
    )


def _strings(node: Any, path: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, (*path, str(k)))
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            yield from _strings(v, (*path, i))


def _dotted(path: Path) -> str:
    """`data.hooks.*.stdout_tail`: list items are `*`, so that a path is named once."""
    return ".".join("*" if isinstance(p, int) else p for p in path)


def _cap_strings(
    node: Any, select: Callable[[Path], bool], limit: int, cuts: list[str] | None, path: Path = ()
) -> Any:
    if isinstance(node, str):
        if len(node) > limit and select(path):
            if cuts is not None:
                cuts.append(_dotted(path))
            return cut(node, limit, tail=_key(path) in TAIL_KEYS)
        return node
    if isinstance(node, dict):
        return {k: _cap_strings(v, select, limit, cuts, (*path, str(k))) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_cap_strings(v, select, limit, cuts, (*path, i)) for i, v in enumerate(node)]
    return node


def _longest_list(node: Any) -> int:
    if isinstance(node, dict):
        return max((_longest_list(v) for v in node.values()), default=0)
    if isinstance(node, list | tuple):
        return max([len(node), *(_longest_list(v) for v in node)])
    return 0


def _cap_lists(node: Any, limit: int, cuts: list[str] | None, path: Path = ()) -> Any:
    """Every list under `data` cut to its first `limit` items."""
    if isinstance(node, dict):
        return {k: _cap_lists(v, limit, cuts, (*path, str(k))) for k, v in node.items()}
    if isinstance(node, list | tuple) and path[:1] == ("data",):
        if len(node) > limit and cuts is not None:
            cuts.append(_dotted(path))
        return [_cap_lists(v, limit, cuts, (*path, i)) for i, v in enumerate(node[:limit])]
    return node


def _with_cuts(ev: dict[str, Any], cuts: list[str]) -> dict[str, Any]:
    data = ev.get("data")
    if not isinstance(data, dict):
        return ev
    before: list[str] = data["cut"] if isinstance(data.get("cut"), list) else []
    paths = list(dict.fromkeys([*before, *(cut(p, 100) for p in cuts)]))
    if len(paths) > MAX_CUT_PATHS:
        paths = [*paths[: MAX_CUT_PATHS - 1], f"... {len(paths) - MAX_CUT_PATHS + 1} more"]
    return {**ev, "data": {**data, "cut": paths}}
