"""Writing a file so that nobody ever sees half of it: not a reader, not the owner after a crash.

The one recipe, used for bucket images and for config.toml: write the bytes to a fresh work file on the
same filesystem, fsync it, rename it over the final name (atomic on POSIX), then fsync the folder so the
rename itself survives a power cut.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that the renames into it survive a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (it must not exist) with `data` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not loosen or tighten what the caller asked for
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, *, work_dir: Path | None = None, mode: int | None = None,
                     sync: bool = True) -> None:
    """Create or replace `path` with `data`: readers see the old file or the whole new one, never a mix.

    A replaced file keeps its permissions unless `mode` is given (a new one gets 0644). The work file goes
    in `work_dir` (default: the folder of `path`; it must be on the same filesystem) and is removed if
    anything fails. `sync=False` leaves the folder's fsync to a caller placing several
    files in one folder, who then calls `sync_folder` once.
    """
    path = Path(path)
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
    work = (work_dir or path.parent) / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        _write_new(work, data, mode)
        os.replace(work, path)
    except BaseException:
        work.unlink(missing_ok=True)
        raise
    if sync:
        sync_folder(path.parent)
