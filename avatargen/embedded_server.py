"""A uvicorn server running as a task inside a process that already runs one: the simulated services
inside `avatargen serve`, the generator worker's Unix socket, the tests' servers.

Such a server leaves signals to the process embedding it, says when it has started, and keeps quiet
about its own start and stop: uvicorn's lifecycle lines ("Started server process [pid]", "Waiting for
application startup", ...) go to the one "uvicorn.error" logger, so each embedded server would repeat
the real server's lines. Its warnings and errors are still logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
from collections.abc import Iterator

import uvicorn

_EMBEDDED = contextvars.ContextVar("embedded_uvicorn", default=False)


class _QuietLifecycle(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not _EMBEDDED.get()


_QUIET = _QuietLifecycle()


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process embedding it and says when it has started."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.up.set()

    def serve_task(self, sock: socket.socket, name: str | None = None) -> asyncio.Task[None]:
        """Serve on `sock` in a task of the running loop, its lifecycle lines left out of the log."""
        uvicorn_log = logging.getLogger("uvicorn.error")
        if _QUIET not in uvicorn_log.filters:
            uvicorn_log.addFilter(_QUIET)
        return asyncio.create_task(self._serve_quietly(sock), name=name)

    async def _serve_quietly(self, sock: socket.socket) -> None:
        _EMBEDDED.set(True)  # in this task's own copy of the context: the embedding server's lines are untouched
        await self.serve(sockets=[sock])
