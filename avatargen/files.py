"""Writing a file so that nobody ever sees half of it: not a reader, not the owner after a crash; and the
owner's data readable by the owner alone.

The one recipe, used for bucket images and for config.toml: write the bytes to a fresh work file on the
same filesystem, fsync it, rename it over the final name (atomic on POSIX), then fsync the folder so the
rename itself survives a power cut.

Data files are 0600 and data folders 0700, whatever the umask: visitors' addresses, the ledger and held
images (the gate held them for a reason) are nobody else's business on a shared machine. The modes are set
with chmod after creating, since the umask only ever takes permissions away from what is asked.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700


def private_folder(folder: Path) -> None:
    """Create `folder` (and its missing parents) 0700, as `mkdir -p` would (FileExistsError when a file is in
    the way); one that exists is made 0700 when this user owns it and others may enter it (made by an older
    version, or by hand)."""
    missing = []
    path = Path(folder)
    while not os.path.lexists(path):  # from the folder up to the first that exists
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_FOLDER)
        except FileExistsError:
            if not path.is_dir():
                raise
            continue  # made meanwhile by another process, which sets its mode
        os.chmod(path, PRIVATE_FOLDER)
    if not missing:
        if not path.is_dir():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
        make_private(path, PRIVATE_FOLDER)


def make_private(path: Path, mode: int = PRIVATE_FILE) -> None:
    """Take group and other permissions off a file or folder of this user's that has them; nothing when it
    is missing or another user's (the owner decided that)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if info.st_uid == os.getuid() and not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o077:
        os.chmod(path, mode)


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

    A replaced file keeps its permissions unless `mode` is given (a new one gets 0600). The work file goes
    in `work_dir` (default: the folder of `path`; it must be on the same filesystem) and is removed if
    anything fails. `sync=False` leaves the folder's fsync to a caller placing several
    files in one folder, who then calls `sync_folder` once.
    """
    path = Path(path)
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = PRIVATE_FILE
    work = (work_dir or path.parent) / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        _write_new(work, data, mode)
        os.replace(work, path)
    except BaseException:
        work.unlink(missing_ok=True)
        raise
    if sync:
        sync_folder(path.parent)
