"""Start-up checks that turn what would fail later into a config error now, naming the key to fix.

`avatargen check-config` runs them, and `avatargen serve` runs them before it listens: a folder that
cannot be written must not surface as a NotADirectoryError after the server says it is listening, or
as a 500 for the first visitor who is due a unique.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from avatargen.config import ConfigError, Settings
from avatargen.files import private_folder
from avatargen.gpu import check_settings
from avatargen.gpu.providing import check_simulated
from avatargen.sd import check_backend
from avatargen.storage.files.bucket import open_buckets
from server.logs import log_path, open_private
from server.socket_place import generator_socket


def preflight(settings: Settings) -> list[str]:
    """Raise ConfigError for the first problem found; create the folders the server needs on the way.
    Returns what the owner may want to know otherwise (where the ComfyUI workflow takes each setting)."""
    check_settings(settings)
    if settings.metrics_token() and settings.metrics_token() == settings.admin_token():
        raise settings.error("must differ from the admin token: /metrics is read-only, the admin token is not",
                             "metrics.token")
    if settings.gpu.provider == "simulated":
        check_simulated(settings)
    notes = check_backend(settings)
    check_folders(settings)
    return notes


def check_folders(settings: Settings) -> None:
    """Create every folder the server writes to (the data folder, each bucket and its work folders, unless
    the buckets live in Redis) and the log file, and prove each writable by writing to it."""
    _check_writable(settings, "server.data_dir", settings.server.data_dir)
    if settings.storage.backend == "files":
        _check_bucket_folders(settings)
    try:
        open_private(log_path(settings)).close()
    except OSError as exc:
        raise settings.error(f"cannot write the log file {log_path(settings)}: {exc.strerror}",
                             "server.data_dir") from None
    if settings.storage.backend == "files":  # the workers of one server meet on a socket
        try:
            generator_socket(settings.server.data_dir)
        except OSError as exc:
            raise settings.error(str(exc), "server.data_dir") from None


def _check_bucket_folders(settings: Settings) -> None:
    try:
        buckets = open_buckets(settings)  # creates each bucket's folders
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else settings.server.data_dir
        raise _folder_error(settings, _key_of(settings, where), where, exc) from None
    for name, bucket in buckets.items():
        for folder in bucket.folders:
            _check_writable(settings, f"buckets.{name}.dir", folder)


def _check_writable(settings: Settings, key: str, folder: Path) -> None:
    try:
        private_folder(folder)
        with tempfile.TemporaryFile(dir=folder) as probe:  # gone when closed, even if this process dies
            probe.write(b"avatargen write test")
            probe.flush()
            os.fsync(probe.fileno())  # a full disk may only say so here
    except OSError as exc:
        raise _folder_error(settings, key, folder, exc) from None


def _folder_error(settings: Settings, key: str, folder: Path, exc: OSError) -> ConfigError:
    reason = "a file of that name is in the way" if isinstance(exc, FileExistsError) else exc.strerror
    return settings.error(f"cannot create or write the folder {folder}: {reason}", key)


def _key_of(settings: Settings, path: Path) -> str:
    """The setting that places a path: the bucket folder holding it, else the data folder."""
    for name, bucket in settings.buckets.items():
        if path.is_relative_to(bucket.dir):
            return f"buckets.{name}.dir"
    return "server.data_dir"
