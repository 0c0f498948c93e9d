"""The unique allowance: a global token bucket plus one unique per visitor per window.

The state lives in SQLite under `server.data_dir` so that every worker process (and a restart) sees
the same tokens and the same visitors; a token is taken and the visitor marked in one `BEGIN
IMMEDIATE` transaction, so two processes can never spend the same token. The same file holds the
fallback pool's retire slot (at most one served fallback retired per `fallback_retire_every`).

The request path must stay cheap: this process remembers when the next token can be due at the
earliest and which visitors it has seen served, and only asks SQLite when a grant might succeed.
Other processes can only take tokens, never add them, so that memory errs on the side of asking.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from avatargen import sqlite
from avatargen.config import ServingSettings

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS visitors (visitor TEXT PRIMARY KEY, granted_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS visitors_by_time ON visitors (granted_at)",
)
# Visitors this process remembers as served, so their repeat visits skip SQLite; the oldest are dropped.
_REMEMBERED_VISITORS = 10_000


class Allowance:
    """Who may have a unique now, shared by all processes through one SQLite file.

    `clock` is wall-clock seconds (shared between processes and across restarts, unlike a monotonic
    clock); tests pass their own to move time forward.
    """

    def __init__(self, path: Path, serving: ServingSettings, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.every = serving.unique_every
        self.burst = serving.unique_burst
        self.window = serving.unique_per_visitor
        self.retire_every = serving.fallback_retire_every
        self.clock = clock
        self._lock = threading.Lock()
        self._next_token_at = float("-inf")
        self._next_retire_at = float("-inf")
        self._served: dict[str, float] = {}
        self._db = sqlite.connect(self.path)
        try:
            with self._transaction() as db:
                for statement in _SCHEMA:
                    db.execute(statement)
                now = self.clock()
                # A fresh allowance starts full, and the first served fallback may be retired at once.
                db.executemany("INSERT OR IGNORE INTO state (name, value) VALUES (?, ?)",
                               [("tokens", self.burst), ("tokens_at", now), ("next_retire_at", now)])
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (BEGIN IMMEDIATE) so check-then-update is atomic.

        Whatever fails, the COMMIT included ("database or disk is full"), the transaction is rolled back:
        nothing was spent, and the connection is ready for the next one.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @staticmethod
    def _read(db: sqlite3.Connection, name: str) -> float:
        return db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()[0]

    @staticmethod
    def _write(db: sqlite3.Connection, **values: float) -> None:
        db.executemany("UPDATE state SET value = ? WHERE name = ?", [(v, k) for k, v in values.items()])

    def _tokens(self, db: sqlite3.Connection, now: float) -> float:
        """Tokens available now: the stored count plus one per `every` since, capped at `burst`."""
        if self.every <= 0:
            return float(self.burst)
        elapsed = max(0.0, now - self._read(db, "tokens_at"))
        return min(float(self.burst), self._read(db, "tokens") + elapsed / self.every)

    def _remember(self, visitor: str, granted_at: float) -> None:
        self._served.pop(visitor, None)
        self._served[visitor] = granted_at
        if len(self._served) > _REMEMBERED_VISITORS:
            del self._served[next(iter(self._served))]

    def token_may_be_due(self) -> bool:
        """False when this process knows no unique can be given to anyone yet; no I/O, no visitor needed."""
        return self.burst >= 1 and self.clock() >= self._next_token_at

    def may_grant(self, visitor: str) -> bool:
        """False when this process already knows `grant` would refuse; no I/O, for the request path."""
        if not self.token_may_be_due():
            return False
        granted_at = self._served.get(visitor)
        return granted_at is None or granted_at <= self.clock() - self.window

    def grant(self, visitor: str) -> bool:
        """Take a token for this visitor if one is available and the visitor had no unique this window.

        Call it only when a unique is about to be claimed, and `give_back` if the claim then fails:
        tokens pay for uniques actually served.
        """
        now = self.clock()
        with self._transaction() as db:
            row = db.execute("SELECT granted_at FROM visitors WHERE visitor = ?", (visitor,)).fetchone()
            tokens = self._tokens(db, now)
            served_at = row[0] if row is not None and row[0] > now - self.window else None
            granted = served_at is None and tokens >= 1
            if granted:
                tokens -= 1
                served_at = now
                self._write(db, tokens=tokens, tokens_at=now)
                db.execute("INSERT OR REPLACE INTO visitors (visitor, granted_at) VALUES (?, ?)", (visitor, now))
                db.execute("DELETE FROM visitors WHERE granted_at <= ?", (now - self.window,))
        # Only what was committed is remembered.
        if served_at is not None:
            self._remember(visitor, served_at)
        self._next_token_at = now + (1 - tokens) * self.every if tokens < 1 else now
        return granted

    def give_back(self, visitor: str) -> None:
        """Undo a grant whose claim found no unique: the token returns and the visitor may try again."""
        now = self.clock()
        with self._transaction() as db:
            tokens = min(float(self.burst), self._tokens(db, now) + 1)
            self._write(db, tokens=tokens, tokens_at=now)
            db.execute("DELETE FROM visitors WHERE visitor = ?", (visitor,))
        self._served.pop(visitor, None)
        self._next_token_at = now

    def may_retire(self) -> bool:
        """False when this process already knows the retire slot is not due; no I/O."""
        return self.clock() >= self._next_retire_at

    def retire(self) -> bool:
        """Take the fallback retire slot if it is due (across all processes); True: retire this image."""
        now = self.clock()
        with self._transaction() as db:
            due_at = self._read(db, "next_retire_at")
            if now >= due_at:
                due_at = now + self.retire_every
                self._write(db, next_retire_at=due_at)
                taken = True
            else:
                taken = False
        self._next_retire_at = due_at
        return taken
