"""The durable local record of requests and outgoing events (SQLite, WAL, fsync on commit).

It is what makes a message_id run at most once per host (requests) and what keeps an event that
the broker has not confirmed yet (outbox), published in order once the broker is back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from worker import events

RECEIVED, STARTED, FINISHED = "received", "started", "finished"


class JournalInUse(RuntimeError):
    """Another process has this journal open: two workers on one state directory would each
    run, publish and reconcile the other's requests."""


def _lock(path: Path) -> IO[bytes]:
    """An exclusive lock on `<journal>.lock`, held until `close()`, or until the process dies or
    drops the journal unclosed (a `kill -9` frees it at once); the holder's pid is written in
    it, for the error message."""
    f = open(f"{path}.lock", "a+b")  # noqa: SIM115 - held open: the lock is the open file
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(f.fileno(), 32, 0).decode(errors="replace").strip() or "unknown"
        f.close()
        raise JournalInUse(
            f"the journal {path} is in use by another process (pid {holder}): each worker"
            " needs a state_dir of its own"
        ) from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n".encode())
    f.flush()
    return f


_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id   TEXT PRIMARY KEY,
    op           TEXT NOT NULL,
    vm_uuid      TEXT,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    runs         INTEGER NOT NULL DEFAULT 0,
    deliveries   INTEGER NOT NULL DEFAULT 0,
    before_sent  INTEGER NOT NULL DEFAULT 0,
    final_delivery INTEGER NOT NULL DEFAULT 0,
    outcome      TEXT,
    terminal     TEXT,
    received_at  REAL NOT NULL,
    updated_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_state ON requests(state, updated_at);
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    routing_key  TEXT NOT NULL,
    body         TEXT NOT NULL,
    created_at   REAL NOT NULL,
    sent_at      REAL
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox(sent_at, seq);
"""


_REQUEST_COLUMNS = (
    "request_id, op, vm_uuid, state, attempts, runs, deliveries, before_sent, outcome, terminal,"
    " final_delivery"
)


@dataclass
class Request:
    request_id: str
    op: str
    vm_uuid: str | None
    state: str
    attempts: int
    runs: int
    deliveries: int
    before_sent: bool
    outcome: str | None
    terminal: list[Any] | None  # [routing_key, event]
    final_delivery: bool = False  # running on the broker's last delivery (x-delivery-limit)


def _request(row: tuple[Any, ...]) -> Request:
    rid, op, vm, state, attempts, runs, deliveries, before_sent, outcome, terminal, final = row
    return Request(
        rid,
        op,
        vm,
        state,
        attempts,
        runs,
        deliveries,
        bool(before_sent),
        outcome,
        json.loads(terminal) if terminal else None,
        bool(final),
    )


def _body(ev: dict[str, Any]) -> str:
    """An event as the outbox holds it: compact JSON, published as it is."""
    return events.encode(ev).decode()


@dataclass
class OutboxEntry:
    seq: int
    routing_key: str
    event: dict[str, Any]
    body: bytes = b""  # the event as stored: compact JSON, published as it is


class Journal:
    """Thread-safe: one connection, one lock. Every write is durable when its method returns
    (the WAL is fsync'd, as `synchronous=FULL` would). The fsync is made outside the lock and
    covers every commit made before it: writers that commit while one is under way share the
    next (group commit). Other threads never wait for someone else's fsync to write."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # before SQLite opens it: two processes creating one journal at once made one of them
        # fail on "database is locked"; one journal, one process
        self._lock_file: IO[bytes] | None = _lock(path)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # a commit writes the WAL without an fsync; `_sync` fsyncs it before a write returns
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(requests)")}
            if "final_delivery" not in cols:  # a journal written by an older version
                self._db.execute(
                    "ALTER TABLE requests ADD COLUMN final_delivery INTEGER NOT NULL DEFAULT 0"
                )
            self._lock = threading.Lock()
            self._sync_lock = threading.Lock()
            self._commits = 0  # commits made (in the WAL)
            self._synced = 0  # commits made durable (fsync'd)
            self._last_seq = 0  # the newest outbox entry written
            self._durable_seq = 0  # the newest outbox entry fsync'd: `pending` goes no further
            self._wal_fd: int | None = None
            # what an earlier run left is on disk once this fsync returns: it may all be sent
            (last,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()
            self._last_seq = int(last)
            self._sync(1)
        except BaseException:
            self._unlock()
            raise

    def close(self) -> None:
        self._sync(self._commits)
        with self._lock:
            self._db.close()
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # the lock goes with the open file
            self._lock_file = None

    @contextmanager
    def _tx(self, *, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """One write in its own transaction. With `wait` (the default) it is durable when the
        block returns; without, it survives the worker's death at once (it is in the WAL) and
        a power loss from the next fsync on (any other write's)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._commits += 1
            n = self._commits
        if wait:
            self._sync(n)

    def _statement(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """One write statement as its own transaction (autocommit), not waited for on disk, as
        `_tx(wait=False)` but one call into SQLite instead of three: on the connection thread
        each is a wait for the GIL when the pool is busy. Returns its rows (RETURNING)."""
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()  # stepped to the end: committed
            self._commits += 1
        return rows

    def _sync(self, n: int) -> None:
        """Make commit `n` (and every one before it) durable: one fsync of the WAL, outside
        the lock, for all the commits made so far."""
        with self._sync_lock:
            if self._synced >= n:
                return  # another thread's fsync covered it
            with self._lock:
                upto, seq = self._commits, self._last_seq
                if self._wal_fd is None:
                    with contextlib.suppress(FileNotFoundError):  # every commit makes it
                        self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
            if self._wal_fd is not None:
                os.fsync(self._wal_fd)  # the inode's data, whoever wrote it
            else:  # no WAL yet, so no commit yet: what there is, is in the database file
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._synced, self._durable_seq = upto, seq

    @property
    def durable_seq(self) -> int:
        """The newest outbox entry on disk: nothing after it may be published yet."""
        return self._durable_seq

    # -- requests ----------------------------------------------------------------------
    def get(self, request_id: str) -> Request | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE request_id=?", (request_id,)
            ).fetchone()
        return None if row is None else _request(row)

    def receive(self, request_id: str, op: str, vm_uuid: str | None) -> Request:
        """Record a delivery of `request_id` (creating it if new) and return its record.

        Its fsync is not waited for: what must be on disk is `start` (before libvirt is
        called) and `finish` (before the ack), and their fsync covers this too. Lost in a
        power loss before them, the request had not started: its redelivery runs it, as it
        would have."""
        now = time.time()
        (row,) = self._statement(
            "INSERT INTO requests(request_id, op, vm_uuid, state, deliveries, received_at,"
            " updated_at) VALUES (?,?,?,?,1,?,?) ON CONFLICT(request_id) DO UPDATE SET"
            " deliveries = deliveries + 1, updated_at = excluded.updated_at"
            f" RETURNING {_REQUEST_COLUMNS}",
            (request_id, op, vm_uuid, RECEIVED, now, now),
        )
        return _request(row)

    def start(self, request_id: str, before: tuple[str, dict[str, Any]] | None) -> int | None:
        """Mark a run as started; queue the `before` event unless one was already queued.
        Returns the outbox seq of the `before` event, if queued now."""
        seq = None
        encoded = None if before is None else (before[0], _body(before[1]))  # outside the lock
        with self._tx() as db:
            if encoded is not None:
                sent = db.execute(
                    "SELECT before_sent FROM requests WHERE request_id=?", (request_id,)
                ).fetchone()
                if not sent or not sent[0]:
                    seq = self._enqueue(db, *encoded)
            db.execute(
                "UPDATE requests SET state=?, runs=runs+1, updated_at=?,"
                " before_sent=before_sent OR ? WHERE request_id=?",
                (STARTED, time.time(), seq is not None, request_id),
            )
        return seq

    def mark_final_delivery(self, request_id: str) -> None:
        """This delivery is the broker's last one: if the worker dies running it, the broker
        dead-letters the message and it never comes back (Admission.reconcile). On
        disk with the `start` that follows (it matters only for a request that started)."""
        with self._tx(wait=False) as db:
            db.execute(
                "UPDATE requests SET final_delivery=1, updated_at=? WHERE request_id=?",
                (time.time(), request_id),
            )

    def add_attempts(self, request_id: str, n: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE requests SET attempts=attempts+? WHERE request_id=?", (n, request_id)
            )

    def finish(
        self,
        request_id: str,
        outcome: str,
        terminal: tuple[str, dict[str, Any]],
        attempts: int = 0,
    ) -> int:
        """Record the terminal event (and the run's libvirt attempts) and queue the event for
        publishing, in one transaction. The event is encoded once, before the lock is taken:
        the outbox holds it as it is, the request's record as `[routing key, event]`."""
        rk, ev = terminal
        body = _body(ev)
        record = f"[{json.dumps(rk)},{body}]"
        with self._tx() as db:
            db.execute(
                "UPDATE requests SET state=?, outcome=?, terminal=?, updated_at=?,"
                " attempts=attempts+? WHERE request_id=?",
                (FINISHED, outcome, record, time.time(), attempts, request_id),
            )
            return self._enqueue(db, rk, body)

    def terminal_of(self, req: Request) -> tuple[str, dict[str, Any]] | None:
        if req.terminal is None:
            return None
        rk, ev = req.terminal
        return str(rk), dict(ev)

    def unfinished(self) -> list[Request]:
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT request_id FROM requests WHERE state != ? ORDER BY received_at",
                    (FINISHED,),
                )
            ]
        return [r for r in (self.get(i) for i in ids) if r is not None]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state"))

    # -- outbox ------------------------------------------------------------------------
    def _enqueue(self, db: sqlite3.Connection, rk: str, body: str) -> int:
        cur = db.execute(
            "INSERT INTO outbox(routing_key, body, created_at) VALUES (?,?,?)",
            (rk, body, time.time()),
        )
        assert cur.lastrowid is not None
        self._last_seq = max(self._last_seq, cur.lastrowid)  # under the lock (_tx)
        return cur.lastrowid

    def enqueue(self, rk: str, ev: dict[str, Any]) -> int:
        """Queue an event that belongs to no request state change (duplicates, state events)."""
        body = _body(ev)
        with self._tx() as db:
            return self._enqueue(db, rk, body)

    def pending(self, after_seq: int = 0, limit: int = 1000) -> list[OutboxEntry]:
        """Unsent events, oldest first; only durable ones: an event never leaves before the
        journal record it belongs to is on disk."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, routing_key, body FROM outbox WHERE sent_at IS NULL AND seq > ?"
                " AND seq <= ? ORDER BY seq LIMIT ?",
                (after_seq, self._durable_seq, limit),
            ).fetchall()
        return [OutboxEntry(seq, rk, json.loads(body), body.encode()) for seq, rk, body in rows]

    def mark_sent(self, seqs: list[int]) -> None:
        """These events are confirmed by the broker. Committed (a killed worker does not send
        them again) but not waited for on disk: the next fsync covers it. After a power loss
        in between, they are sent again, with the same event ids."""
        if not seqs:
            return
        self._statement(
            f"UPDATE outbox SET sent_at=? WHERE seq IN ({','.join('?' * len(seqs))})",
            (time.time(), *seqs),
        )

    def outbox_size(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()
        return int(n)

    def prune(self, older_than_s: float) -> int:
        """Forget requests and sent events untouched for longer than the retention; returns the
        number of requests forgotten. Unsent events are always kept. An unfinished request that
        old will not be redelivered any more (the broker's consumer timeout and delivery limit
        are far shorter), so it goes too."""
        cutoff = time.time() - older_than_s
        with self._tx() as db:
            n = db.execute("DELETE FROM requests WHERE updated_at < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?", (cutoff,))
        return int(n)
