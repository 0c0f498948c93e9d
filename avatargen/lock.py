"""One generator per data directory, even with several server processes (uvicorn --workers N).

An exclusive, non-blocking flock on `<data_dir>/generator.lock`: the kernel releases it when the holder
dies, so a crash never leaves a stale lock behind. The file records the holder's pid for the owner.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class GeneratorLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "generator.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True when this process now runs the generator; False when another process does."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
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
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
