"""Real storage faults for the fault matrix and the tests: a read-only folder, a full disk, a locked SQLite file.

The first two are made with a tmpfs mounted on the folder (root and CAP_SYS_ADMIN needed: the CI
container and the development machine have them). Permission bits would not do: root ignores them.
Read-only is a remount, so the files already there stay readable; full is a small tmpfs filled to the
last byte. The lock is another process holding `BEGIN EXCLUSIVE` on the file until released.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mount {' '.join(args)} failed (needs root and CAP_SYS_ADMIN): {done.stderr.strip()}")


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "64m") -> Iterator[Path]:
    """A fresh tmpfs of `size` mounted on `folder` (created if missing), unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder))
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def read_only(folder: Path, on: bool = True) -> None:
    """Remount the tmpfs on `folder` read-only (or read-write again): every write fails with EROFS."""
    _mount("-o", f"remount,{'ro' if on else 'rw'}", str(folder))


def fill(folder: Path) -> Path:
    """Fill the filesystem of `folder` to the last byte with one file (delete it to make room again)."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        with contextlib.suppress(OSError):  # the last few bytes one at a time
            while out.write(b"\0"):
                pass
    return filler


# The holder takes the write lock and keeps it until told to let go (its stdin closed).
_LOCK_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


class SqliteLock:
    """Another process holding an exclusive lock on a SQLite file from `__enter__` until `release()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._holder: subprocess.Popen[str] | None = None

    def __enter__(self) -> SqliteLock:
        self._holder = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(self.path)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != "locked":
            self.release()
            raise RuntimeError(f"could not lock {self.path}")
        return self

    def release(self) -> None:
        if self._holder is not None and self._holder.poll() is None:
            self._holder.communicate("", timeout=10)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
