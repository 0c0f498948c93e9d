"""One generator per data directory, even with several server processes (uvicorn --workers N).

An exclusive, non-blocking flock on `<data_dir>/generator.lock`: the kernel releases it when the holder
dies, so a crash never leaves a stale lock behind. The file records the holder's pid for the owner.
`FileLease` is the same lock as the generator's lease (`avatargen.storage.protocols.GeneratorLease`): the
other workers try it again every `retry_every` and one of them takes over when the holder dies.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path


class GeneratorLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "generator.lock"
        self._fd: int | None = None
        # The pid a holder that died holding the lock left in the file (a clean release empties it): set by
        # the acquire that found it, so the process that takes over says so even when it was not one of the
        # workers standing by (uvicorn's replacement of the dead worker can take the lock first).
        self.dead_holder: str | None = None

    def acquire(self) -> bool:
        """True when this process now runs the generator; False when another process does."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        left = os.pread(fd, 64, 0).decode(errors="replace").strip()
        self.dead_holder = left if left and left != str(os.getpid()) else None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        """Let go, emptying the file first: the next holder finds no pid, so it is not taking over."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class FileLease:
    """The lock file as a `GeneratorLease`: never lost while its process lives."""

    def __init__(self, lock: GeneratorLock, *, retry_every: float = 1.0) -> None:
        self.lock = lock
        self.retry_every = retry_every

    @property
    def takeover(self) -> float:
        """At most how long after this worker dies another one holds the lock (the kernel releases it at the
        death; the others try every `retry_every`); with no other worker, nobody does until a restart."""
        return self.retry_every

    async def acquire(self) -> bool:
        return self.lock.acquire()  # a non-blocking flock: nothing to wait for

    async def wait_acquire(self) -> None:
        while not self.lock.acquire():
            await asyncio.sleep(self.retry_every)

    async def keep(self) -> None:
        await asyncio.Event().wait()  # the kernel holds it until this process ends

    async def confirm(self, duration: float) -> None:
        """Held for as long as this process lives: any machine call may go ahead."""

    def held(self) -> bool:
        return True  # once acquired, for as long as this process lives: it never lapses

    async def holder(self) -> str | None:
        return f"pid {self.lock.holder()}"

    def inherited(self) -> str | None:
        return f"pid {self.lock.dead_holder}" if self.lock.dead_holder else None

    async def release(self) -> None:
        self.lock.release()


class DataFolderInUse(Exception):
    """The data folder is held by the other side: a migration while a server starts, or the reverse."""


class DataFolderLock:
    """Who uses `data_dir` now: every `avatargen serve` shares `<data_dir>/in-use.lock` for as long as it
    runs, and `avatargen migrate` takes it alone. Each side's flock is refused while the other holds it,
    by the kernel at once, so a server never starts in the middle of a migration and a migration never
    starts under a server; a process that dies lets go of it with its last breath."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "in-use.lock"
        self._fd: int | None = None

    def share(self) -> None:
        """Hold the folder as a server does (alongside other servers); DataFolderInUse during a migration."""
        self._take(fcntl.LOCK_SH, "a migration (avatargen migrate, pid {holder}) is moving the buckets: "
                   "start the server once it has finished")

    def take_alone(self) -> None:
        """Hold the folder alone, as a migration does; DataFolderInUse while any server uses it."""
        self._take(fcntl.LOCK_EX, "an avatargen server uses {path}: stop every avatargen serve first")

    def _take(self, mode: int, refusal: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.path.read_text().strip() or "unknown"
            os.close(fd)
            raise DataFolderInUse(refusal.format(holder=holder, path=self.path.parent)) from None
        if mode == fcntl.LOCK_EX:  # the migration says who it is; servers leave the file alone
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Let go (closing the file ends the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
