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


def _fetch(
    conn: Connection, q: sa.Select[Any], order: list[Any], keys: list[Any], n: int
) -> tuple[list[Any], str | None]:
    """The first `n` rows of `q` in `order`, and the cursor after them (their last row's
    `keys`) if there are more."""
    rows = list(conn.execute(q.order_by(*order).limit(n + 1)).mappings())
    more = len(rows) > n
    rows = rows[:n]
    nxt = _encode([rows[-1][k.name] for k in keys]) if more and rows else None
    return rows, nxt


def _asc_page(
    conn: Connection, q: sa.Select[Any], keys: list[Any], limit: int | None, cursor: str | None
) -> tuple[list[Any], str | None]:
    """Rows of `q` in the order of the columns `keys`, one page of them, and the next cursor."""
    after = _decode(cursor, len(keys))
    if after is not None:
        q = q.where(sa.tuple_(*keys) > sa.tuple_(*after) if len(keys) > 1 else keys[0] > after[0])
    return _fetch(conn, q, keys, keys, _limit(limit))


def _desc_page(
    conn: Connection, q: sa.Select[Any], at: Any, rid: Any, limit: int | None, cursor: str | None
) -> tuple[list[Any], str | None]:
    """Rows of `q` newest first (`at` desc, `rid` desc), one page of them, and the next cursor."""
    after = _decode(cursor, 2)
    if after is not None:
        q = q.where(sa.or_(at < after[0], sa.and_(at == after[0], rid < after[1])))
    return _fetch(conn, q, [at.desc(), rid.desc()], [at, rid], _limit(limit))
