"""The unique allowance: a global token bucket plus one unique per visitor per window.

The state lives in SQLite under `server.data_dir` so that every worker process (and a restart) sees
the same tokens and the same visitors; a token is taken and the visitor marked in one `BEGIN
IMMEDIATE` transaction, so two processes can never spend the same token. The same file holds the
fallback pool's retire slot (at most one served fallback retired per `fallback_retire_every`).

The request path must stay cheap: what a process knows without asking the file is
`avatargen.storage.allowance_memo.AllowanceMemo`, shared with the Redis allowance. `FolderAllowance` is
this allowance with the unique bucket's folder as the visitors' `UniqueAllowance`, its blocking calls in
a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from avatargen.config import ServingSettings
from avatargen.storage.allowance_memo import AllowanceMemo
from avatargen.storage.files import sqlite
from avatargen.storage.files.bucket import Bucket
from avatargen.storage.models import AllowanceState, Claim

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS visitors (visitor TEXT PRIMARY KEY, granted_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS visitors_by_time ON visitors (granted_at)",
)


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
        self.memo = AllowanceMemo(every=self.every, burst=self.burst, window=self.window, clock=clock)
        self._lock = threading.Lock()
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

    def token_may_be_due(self) -> bool:
        return self.memo.token_may_be_due()

    def may_grant(self, visitor: str) -> bool:
        return self.memo.may_grant(visitor)

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
            self.memo.served(visitor, served_at)
        self.memo.tokens_left(tokens, now)
        return granted

    def give_back(self, visitor: str) -> None:
        """Undo a grant whose claim found no unique: the token returns and the visitor may try again."""
        now = self.clock()
        with self._transaction() as db:
            tokens = min(float(self.burst), self._tokens(db, now) + 1)
            self._write(db, tokens=tokens, tokens_at=now)
            db.execute("DELETE FROM visitors WHERE visitor = ?", (visitor,))
        self.memo.given_back(visitor, now)

    def state(self) -> AllowanceState:
        """The whole allowance now (visitors whose window has passed left out), for a migration."""
        now = self.clock()
        with self._transaction() as db:
            values = dict(db.execute("SELECT name, value FROM state").fetchall())
            visitors = dict(db.execute("SELECT visitor, granted_at FROM visitors WHERE granted_at > ?",
                                       (now - self.window,)).fetchall())
        return AllowanceState(values["tokens"], values["tokens_at"], values["next_retire_at"], visitors)

    def adopt(self, state: AllowanceState) -> None:
        """Take over an allowance carried from elsewhere: its tokens and retire slot replace these, its visitors
        join these (the later grant wins), so nobody gets a second unique within the window by the move."""
        with self._transaction() as db:
            self._write(db, tokens=state.tokens, tokens_at=state.tokens_at, next_retire_at=state.next_retire_at)
            db.executemany("INSERT INTO visitors (visitor, granted_at) VALUES (?, ?) ON CONFLICT (visitor) "
                           "DO UPDATE SET granted_at = max(granted_at, excluded.granted_at)",
                           list(state.visitors.items()))

    def may_retire(self) -> bool:
        return self.memo.may_retire()

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
        self.memo.retire_due_at(due_at)
        return taken


class FolderAllowance:
    """The SQLite allowance and the unique bucket's folder as a `UniqueAllowance`."""

    def __init__(self, allowance: Allowance, unique: Bucket) -> None:
        self.allowance = allowance
        self.unique = unique

    @classmethod
    async def open(cls, path: Path, serving: ServingSettings, unique: Bucket) -> FolderAllowance:
        return cls(await asyncio.to_thread(Allowance, path, serving), unique)

    def token_may_be_due(self) -> bool:
        return self.allowance.token_may_be_due()

    def may_grant(self, visitor: str) -> bool:
        return self.allowance.may_grant(visitor)

    async def claim(self, visitor: str) -> Claim | None:
        """One worker-thread call for the grant and the claim, the unique's whole cost on the request path."""
        return await asyncio.to_thread(self._grant_and_claim, visitor)

    def _grant_and_claim(self, visitor: str) -> Claim | None:
        """Take the allowance, then a unique; the token is spent only if a unique was actually claimed.

        A grant that cannot be committed was rolled back, and a claim that fails leaves the unique in its
        bucket and gives the token back, before the failure is raised.
        """
        if not self.allowance.grant(visitor):
            return None
        claim = None
        try:
            claim = self.unique.claims.claim()
        finally:
            if claim is None:  # another visitor or process took the last one since the count, or it failed
                self.allowance.give_back(visitor)
        return claim

    async def sent(self, claim: Claim) -> None:
        """Delete the sent unique for good (a failure only leaves a file for the claim sweep)."""
        await asyncio.to_thread(self.unique.claims.finish, claim.id)

    def may_retire(self) -> bool:
        return self.allowance.may_retire()

    async def retire(self) -> bool:
        return await asyncio.to_thread(self.allowance.retire)

    async def aclose(self) -> None:
        self.allowance.close()
