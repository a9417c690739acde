"""Paging of the fleet store's lists, and its times.

Lists page by keyset: `limit` rows and an opaque `cursor` (the `next` of the previous page);
the order is stable: time descending, then row id descending (hosts by name, VMs by host,
name, uuid). A cursor is the key of the last row of a page, JSON in URL-safe base64.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


class BadCursor(ValueError):
    """A cursor this module did not make."""


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _encode(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _decode(cursor: str | None, n: int) -> list[Any] | None:
    if not cursor:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError as e:
        raise BadCursor(cursor) from e
    if not isinstance(values, list) or len(values) != n:
        raise BadCursor(cursor)
    return values


def _limit(limit: int | None) -> int:
    return max(1, min(int(limit or DEFAULT_LIMIT), MAX_LIMIT))


def _page(rows: list[Any], limit: int, key: Any) -> dict[str, Any]:
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": rows, "next": _encode(key(rows[-1])) if more and rows else None}


def _desc_page(
    conn: Connection, q: sa.Select[Any], at: Any, rid: Any, limit: int | None, cursor: str | None
) -> tuple[list[Any], str | None]:
    """Rows of `q` newest first (`at` desc, `rid` desc), one page of them, and the next cursor."""
    n = _limit(limit)
    after = _decode(cursor, 2)
    if after is not None:
        q = q.where(sa.or_(at < after[0], sa.and_(at == after[0], rid < after[1])))
    rows = list(conn.execute(q.order_by(at.desc(), rid.desc()).limit(n + 1)).mappings())
    more = len(rows) > n
    rows = rows[:n]
    nxt = _encode([rows[-1][at.name], rows[-1][rid.name]]) if more and rows else None
    return rows, nxt
