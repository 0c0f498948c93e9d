"""SQLite files shared by several processes (the visitor limits, the cost ledger).

Switching a database to WAL takes an exclusive lock and, unlike ordinary statements, does not wait for
the busy timeout: two processes opening the same new file at once can get "database is locked". The
switch is retried until the file reports WAL, which one of them will have made it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

BUSY_TIMEOUT = 10.0


def connect(path: Path, busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """An autocommit connection in WAL mode, usable from worker threads (callers serialize its use).

    A statement that needs a lock another process holds waits up to `busy_timeout` seconds, then fails
    with "database is locked".
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() == "wal":
                break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                db.close()
                raise
        time.sleep(0.01)  # another process holds the switch-over lock for a moment; nothing to await
    db.execute("PRAGMA synchronous=NORMAL")
    return db
