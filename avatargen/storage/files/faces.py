"""The visitors' faces (`avatargen.storage.face_memo`) in an SQLite file under `server.data_dir`, shared by
the worker processes of one machine."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from avatargen.storage.files import sqlite
from avatargen.storage.models import Face

_SCHEMA = ("CREATE TABLE IF NOT EXISTS faces (visitor TEXT PRIMARY KEY, kind TEXT NOT NULL, id TEXT NOT NULL, "
           "until REAL NOT NULL, variants BLOB)",
           "CREATE INDEX IF NOT EXISTS faces_by_until ON faces (until)")


class FolderFaces:
    """The faces in an SQLite file shared by the worker processes of one machine; a record whose window
    ended is deleted at the next write (and never returned before that)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite.connect(path)
        for statement in _SCHEMA:
            self._db.execute(statement)

    @classmethod
    async def open(cls, path: Path) -> FolderFaces:
        return await asyncio.to_thread(cls, path)

    async def get(self, visitor: str, now: float) -> Face | None:
        return await asyncio.to_thread(self._get, visitor, now)

    def _get(self, visitor: str, now: float) -> Face | None:
        with self._lock:
            row = self._db.execute("SELECT kind, id, until, variants FROM faces WHERE visitor = ? AND until > ?",
                                   (visitor, now)).fetchone()
        return None if row is None else Face(row[0], row[1], row[2], row[3])

    async def put(self, visitor: str, face: Face, now: float) -> None:
        await asyncio.to_thread(self._put, visitor, face, now)

    def _put(self, visitor: str, face: Face, now: float) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM faces WHERE until <= ?", (now,))
                self._db.execute("INSERT OR REPLACE INTO faces VALUES (?, ?, ?, ?, ?)",
                                 (visitor, face.kind, face.id, face.until, face.variants))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()
