"""The product's log: the terminal and `<data_dir>/avatargen.log`, which only the owner can read.

The log names machines, paths and run errors; like the admin token file it is created with mode 0600,
and so is each new file after a rotation. Every handler hides URL credentials (avatargen.redact).
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
from pathlib import Path

from avatargen.config import Settings
from avatargen.redact import RedactingFilter

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_FILE = "avatargen.log"


def log_path(settings: Settings) -> Path:
    return settings.server.data_dir / LOG_FILE


def open_private(path: str | Path, encoding: str | None = None, errors: str | None = None) -> io.TextIOWrapper:
    """Open a file for appending, created with mode 0600 (and set to 0600 if an older version made it 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)
        return open(fd, "a", encoding=encoding, errors=errors)
    except BaseException:
        os.close(fd)
        raise


class PrivateLogFile(logging.handlers.RotatingFileHandler):
    """A rotating log file whose every generation is created with mode 0600."""

    def _open(self) -> io.TextIOWrapper:
        return open_private(self.baseFilename, encoding=self.encoding, errors=self.errors)


def configure_logging(settings: Settings) -> list[logging.Handler]:
    """Log to the terminal and to <data_dir>/avatargen.log (rotated at server.log_max_bytes, 5 MB by default;
    server.log_backups old files kept, 3 by default), URL credentials hidden; the handlers added."""
    root = logging.getLogger("avatargen")
    root.setLevel(logging.INFO)
    formatter = logging.Formatter(LOG_FORMAT)
    console = logging.StreamHandler()
    logfile = PrivateLogFile(log_path(settings), maxBytes=settings.server.log_max_bytes,
                             backupCount=settings.server.log_backups, encoding="utf-8")
    for handler in (console, logfile):
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    return [console, logfile]


def redact_uvicorn_logs() -> None:
    """Hide URL credentials in what uvicorn logs too (an exception in the app, a bad request line); call it
    once uvicorn has set up its handlers (uvicorn.Config does)."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(RedactingFilter())
