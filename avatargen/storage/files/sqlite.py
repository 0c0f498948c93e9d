"""SQLite files shared by several processes (the visitor limits, the cost ledger).

Switching a database to WAL takes an exclusive lock and, unlike ordinary statements, does not wait for
the busy timeout: two processes opening the same new file at once can get "database is locked". The
switch is retried until the file reports WAL, which one of them will have made it.

The files are the owner's alone (0600 in a 0700 folder; see `avatargen.files`): the visitor limits hold
visitors' addresses.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from avatargen.files import PRIVATE_FILE, make_private, private_folder

BUSY_TIMEOUT = 10.0


def _private_database(path: Path) -> None:
    """The database file created 0600 before SQLite opens it (SQLite gives its -wal and -shm files the
    database's permissions), and one made looser by an older version, with its -wal and -shm, made 0600.

    An existing file is never opened here, only chmodded: closing any descriptor of a database file drops
    the POSIX locks every connection of this process holds on it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
        os.chmod(path, PRIVATE_FILE)  # whatever the umask
    except FileExistsError:
        pass
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        make_private(file)


def connect(path: Path, busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """An autocommit connection in WAL mode, usable from worker threads (callers serialize its use).

    A statement that needs a lock another process holds waits up to `busy_timeout` seconds, then fails
    with "database is locked".
    """
    private_folder(path.parent)
    _private_database(path)
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
