"""Where the generator's worker listens for the other workers: `data_dir/generator.sock`, or, when that path
is too long for a Unix socket, a short path in a folder of this user's alone.

A Unix socket's path is at most 107 bytes on Linux (108 with the terminating NUL), and a data folder on a
Docker volume or deep in a home folder easily makes it longer: binding it fails. The short place is
`$XDG_RUNTIME_DIR/avatargen-<uid>/` (the user's own runtime folder, emptied at logout or reboot), else
`/tmp/avatargen-<uid>/`; the socket's name there is a hash of the data folder, so every worker of one
server finds the same socket and two servers with different data folders never share one. The folder is
made 0700 and checked to be a real folder owned by this user (not a symlink, not another user's), since
whoever can connect to the socket is answered as the owner.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path

SOCKET_NAME = "generator.sock"
MAX_PATH_BYTES = 107  # sun_path holds 108 bytes on Linux, the last one the terminating NUL


class SocketPlaceError(OSError):
    """No place for the generator's socket that is short enough and this user's alone."""


def generator_socket(data_dir: Path) -> Path:
    """The socket's path for this data folder; the folder holding it is created (0700) when it is not
    the data folder. SocketPlaceError says why there is none."""
    in_data = data_dir / SOCKET_NAME
    if _fits(in_data):
        return in_data
    name = hashlib.sha256(os.fsencode(data_dir.resolve())).hexdigest()[:16] + ".sock"
    tried = []
    for base in _short_places():
        path = base / f"avatargen-{os.getuid()}" / name
        if _fits(path):
            _private_folder(path.parent)
            return path
        tried.append(str(path))
    raise SocketPlaceError(f"the generator's socket {in_data} is longer than a Unix socket's {MAX_PATH_BYTES} "
                           f"bytes, and so is every shorter place tried ({', '.join(tried)}); use a shorter "
                           "data folder or set XDG_RUNTIME_DIR")


def _fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= MAX_PATH_BYTES


def _short_places() -> list[Path]:
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    places = [Path(runtime)] if runtime and Path(runtime).is_absolute() and Path(runtime).is_dir() else []
    return [*places, Path(tempfile.gettempdir()), Path("/tmp")]


def _private_folder(folder: Path) -> None:
    """Create `folder` 0700, or check the one there is this user's own real folder (0700 made so)."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise SocketPlaceError(f"{folder}, where the generator's socket goes, is not a folder of this user's "
                               "own (a symlink, a file or another user's folder): remove it, it may be a trap")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(folder, 0o700)
