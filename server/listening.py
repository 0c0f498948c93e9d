"""The record of where `avatargen serve` listens, kept in the data folder while it runs.

`avatargen status` and `avatargen-tui` find a server through its config; a server started with
`--host` or `--port` listens elsewhere than the config says, so it writes its address to
`<data_dir>/server.json` (avatargen.api.discovery reads it first). The record is removed when the server
exits; one left by a killed server names a process that is gone, and clients ignore it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from avatargen.api.discovery import listening_file, local_url
from avatargen.config import Settings
from avatargen.files import write_atomically


@contextlib.contextmanager
def recorded_address(settings: Settings, host: str, port: int) -> Iterator[str]:
    """Record `host:port` (as this machine's clients reach it) for the duration; yields the URL."""
    path = listening_file(settings)
    url = local_url(host, port)
    record = {"url": url, "pid": os.getpid()}
    write_atomically(path, json.dumps(record).encode(), mode=0o600)
    try:
        yield url
    finally:
        with contextlib.suppress(OSError, ValueError):
            # Another server started on the same data folder since then owns the record now.
            if json.loads(path.read_text(encoding="utf-8")) == record:
                path.unlink()
