"""The cost ledger: billed machine time per run, on disk, surviving restarts and crashes.

A run's entry is opened the moment the start request goes out and closed when the stop is confirmed,
with the number of images the run stored. An entry left open by a crash is closed by the start-up check
that stops the orphaned machine, so the time the machine ran unattended is billed too. What the entries
add up to (today, this month, by day) is `avatargen.storage.spend`, shared with the Redis ledger.

The SQLite file (`CostLedger`, blocking) and the same as a `Ledger` (`FileLedger`, its calls in worker
threads). The generator never waits on the file: it keeps its own copy of the entries in memory and
writes them here from a worker thread (`avatargen.generator.billing`). A file deleted or replaced under an
open connection goes unnoticed by SQLite (it keeps writing to the deleted file), so the ledger remembers
which file it opened and can tell when the path holds another.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from avatargen.storage.files import sqlite
from avatargen.storage.spend import Entry, Spend, month_start

# How long a write waits for another process's lock before it fails (and is retried later).
WRITE_WAIT = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS machine_time (
    run_id TEXT PRIMARY KEY,
    started REAL NOT NULL,
    stopped REAL,
    hourly_cost REAL NOT NULL,
    images INTEGER NOT NULL DEFAULT 0
)
"""


class CostLedger:
    """The ledger file. Its methods block (a write waits up to WRITE_WAIT for a lock): call them from a
    worker thread, one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db, self._file = self._open()

    def _open(self) -> tuple[sqlite3.Connection, tuple[int, int]]:
        db = sqlite.connect(self.path, busy_timeout=WRITE_WAIT)
        db.execute(_SCHEMA)
        _add_images_column(db)
        return db, _identity(self.path)

    def reopen_if_lost(self) -> str | None:
        """When the file at the path is no longer the one open ("deleted", "replaced by another file"),
        open what is there now (a new, empty ledger if nothing) and say what happened."""
        try:
            lost = "replaced by another file" if _identity(self.path) != self._file else None
        except FileNotFoundError:
            lost = "deleted"
        if lost is not None:
            self._db.close()  # first: it folds its write-ahead log into the old file, not the new one
            self._db, self._file = self._open()
        return lost

    def is_empty(self) -> bool:
        return self._db.execute("SELECT 1 FROM machine_time LIMIT 1").fetchone() is None

    def entries(self, since: float) -> list[Entry]:
        """The entries still open or stopped after `since`."""
        rows = self._db.execute(
            "SELECT run_id, started, stopped, hourly_cost, images FROM machine_time "
            "WHERE stopped IS NULL OR stopped > ?",
            (since,),
        ).fetchall()
        return [Entry(*row) for row in rows]

    def record(self, entries: Iterable[Entry]) -> None:
        """Write entries as they are now (a run's entry is written when it opens and again when it closes)."""
        self._db.executemany(
            "INSERT OR REPLACE INTO machine_time (run_id, started, stopped, hourly_cost, images) "
            "VALUES (?, ?, ?, ?, ?)",
            [(entry.run_id, entry.started, entry.stopped, entry.hourly_cost, entry.images) for entry in entries],
        )

    def spend(self, now: float | None = None) -> Spend:
        """Today's and this month's billed time and cost, open entries counted up to now."""
        now = time.time() if now is None else now
        return Spend.of(self.entries(month_start(now)), now)

    def close_db(self) -> None:
        self._db.close()


def _add_images_column(db: sqlite3.Connection) -> None:
    """A ledger written before images were counted gains the column (its runs count 0 images)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(machine_time)")}
    if "images" not in columns:
        try:
            db.execute("ALTER TABLE machine_time ADD COLUMN images INTEGER NOT NULL DEFAULT 0")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):  # another process added it a moment ago
                raise


def _identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


class FileLedger:
    """The SQLite ledger file (`CostLedger`) as a `Ledger`; its calls go one at a time."""

    def __init__(self, ledger: CostLedger) -> None:
        self.file = ledger
        self.location = str(ledger.path)
        self._lock = asyncio.Lock()  # the connection serves one thread at a time

    @classmethod
    async def open(cls, path: Path) -> FileLedger:
        return cls(await asyncio.to_thread(CostLedger, path))

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        async with self._lock:
            return await asyncio.to_thread(function, *args)

    async def reopen_if_lost(self) -> str | None:
        return await self._call(self.file.reopen_if_lost)

    async def is_empty(self) -> bool:
        return await self._call(self.file.is_empty)

    async def entries(self, since: float) -> list[Entry]:
        return await self._call(self.file.entries, since)

    async def record(self, entries: Iterable[Entry]) -> None:
        await self._call(self.file.record, list(entries))

    async def spend(self, now: float | None = None) -> Spend:
        return await self._call(self.file.spend, now)

    async def aclose(self) -> None:
        await self._call(self.file.close_db)
