"""An ASGI app served by uvicorn as a task of the running event loop: the simulated services, and the
tests' servers, run this way.

The socket is bound and listening before uvicorn starts, so nothing that connects early is refused,
and `start()` returns once uvicorn has started (the app's lifespan included, when it has one). Two
ways to end: abrupt, like a machine losing power (the port closes and open connections drop at once;
requests in flight get `grace` seconds to notice their client is gone, then are cancelled), or
graceful, as `avatargen serve` ends on SIGTERM (the lifespan shuts down, requests finish).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from avatargen.embedded_server import EmbeddedServer
from avatargen.sockets import bound_socket


def http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def listening_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A socket bound and listening: connections queue in the kernel from now on, none is refused."""
    sock = bound_socket(host, port, reuse_port=reuse_port)
    try:
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class LoopbackServer:
    """`app` served on `host:port` (0: a free port) in this event loop; `url` once started.

    `graceful=False` (the default) stops like a power cut, `True` like a SIGTERM; `options` are
    uvicorn's (a test server passes `avatargen serve`'s). The app's lifespan runs only when
    `lifespan="on"`. `reuse_port`: the port is held meanwhile by a socket of ours with SO_REUSEPORT
    (`bound_socket`), as the simulated GPU holds its SD server's port while the machine is off.
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, grace: float = 1.0,
                 graceful: bool = False, lifespan: str = "off", reuse_port: bool = False, **options: Any) -> None:
        self._app = app
        self.host = host
        self.port = port
        self._reuse_port = reuse_port
        self._grace = grace
        self._graceful = graceful
        self._options = {"lifespan": lifespan, "access_log": False, **options}
        self._sock: socket.socket | None = None
        self._server: EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """Serve from now on; RuntimeError when uvicorn gives up starting (the app's lifespan failed)."""
        self._sock = listening_socket(self.host, self.port, reuse_port=self._reuse_port)
        self.port = self._sock.getsockname()[1]
        # No log_config or log_level: uvicorn would reconfigure the embedding process's logging.
        config = uvicorn.Config(self._app, log_config=None, log_level=None, **self._options)
        server = self._server = EmbeddedServer(config)
        task = self._task = server.serve_task(self._sock)
        up = asyncio.create_task(server.up.wait())
        await asyncio.wait({up, task}, return_when=asyncio.FIRST_COMPLETED)
        up.cancel()
        if not server.up.is_set():
            await self.stop()
            raise RuntimeError(f"the server on {self.url} did not start")

    async def stop(self) -> None:
        """Stop serving; every step may be repeated, so a stop interrupted by cancellation can be finished."""
        server, task, sock = self._server, self._task, self._sock
        if server is None or task is None or sock is None:
            return
        if self._graceful:
            server.should_exit = True
            await asyncio.gather(task, return_exceptions=True)
        else:
            task.cancel()  # uvicorn's own shutdown waits politely; a power cut does not
            await asyncio.gather(task, return_exceptions=True)
        for listener in getattr(server, "servers", []):
            listener.close()
        sock.close()  # in case uvicorn was cancelled before it took the socket over
        for connection in list(server.server_state.connections):
            connection.transport.close()
        requests = set(server.server_state.tasks)
        if requests:
            _, stuck = await asyncio.wait(requests, timeout=self._grace)
            for request in stuck:
                request.cancel()
        self._server = self._task = self._sock = None

    async def __aenter__(self) -> LoopbackServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
