"""Own or borrow a connection pool (`avatargen.http_client.HttpClient`), for every HTTP client built on it.

Through real HTTP on a loopback server that sees each connection open and close: a client that opened
its pool closes it (the server sees the connection end), one handed a pool leaves it open for its owner
(the pool goes on using the same connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from avatargen.api import AdminClient
from avatargen.config import Secret, Settings
from avatargen.gpu.paperspace import PaperspaceClient
from avatargen.gpu.serverless import Endpoint
from avatargen.gpu.serverless_api import ServerlessClient
from avatargen.http_client import HttpClient
from avatargen.journal import JobJournal
from avatargen.sd.a1111 import SdClient
from avatargen.sd.comfyui import ComfyUiClient
from avatargen.sd.serverless import ServerlessComfyUi
from avatargen.sd.workflow import load_workflow
from tests.simhelpers import sd_settings

# Each client that may borrow a pool, made for a server at `url`, with `pool` or a pool of its own (and a
# folder for what it keeps on disk).
Make = Callable[[str, httpx.AsyncClient | None, Path], HttpClient]


def serverless(url: str, pool: httpx.AsyncClient | None, folder: Path) -> HttpClient:
    endpoint = Endpoint(ServerlessClient(url, "endpoint", Secret("key")), JobJournal(folder / "jobs.json"),
                        max_in_flight=1, poll_every=1.0, queue_timeout=60.0, idle_timeout=60.0)
    return ServerlessComfyUi(sd_settings(), load_workflow(Settings()), endpoint, http=pool)


BORROWERS: dict[str, Make] = {
    "sd web UI": lambda url, pool, _: SdClient(sd_settings(), url=url, http=pool),
    "ComfyUI": lambda url, pool, _: ComfyUiClient(sd_settings(), load_workflow(Settings()), url=url, http=pool),
    "serverless ComfyUI": serverless,
    "Paperspace API": lambda url, pool, _: PaperspaceClient(url, Secret("key"), http=pool),
}
# The admin API's client always opens its own: the server's address and the token are its pool's settings.
OWNERS: dict[str, Make] = {**BORROWERS, "admin API": lambda url, pool, _: AdminClient(url, "token")}


class Connections:
    """Answers every request with `{}`, keeping each connection alive, and counts connections."""

    def __init__(self) -> None:
        self.opened = 0
        self.open = 0
        self._changed = asyncio.Condition()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._changed:
            self.opened += 1
            self.open += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")  # the requests here are GETs: no body
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()
            async with self._changed:
                self.open -= 1
                self._changed.notify_all()

    async def all_closed(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.open == 0)


@asynccontextmanager
async def loopback() -> AsyncIterator[tuple[Connections, str]]:
    connections = Connections()
    server = await asyncio.start_server(connections.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield connections, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("name", OWNERS)
async def test_a_client_closes_the_pool_it_opened(name: str, tmp_path: Path) -> None:
    async with loopback() as (connections, url):
        async with OWNERS[name](url, None, tmp_path) as client:
            assert (await client.http.get(url + "/")).json() == {}
            assert connections.open == 1
        async with asyncio.timeout(30):
            await connections.all_closed()
        assert client.http.is_closed


@pytest.mark.parametrize("name", BORROWERS)
async def test_a_client_leaves_a_borrowed_pool_open(name: str, tmp_path: Path) -> None:
    async with loopback() as (connections, url), httpx.AsyncClient() as pool:
        async with BORROWERS[name](url, pool, tmp_path) as client:
            assert client.http is pool
            await client.http.get(url + "/")
        assert not pool.is_closed
        assert (await pool.get(url + "/")).json() == {}
        assert (connections.opened, connections.open) == (1, 1), "the borrowed pool's connection was closed"
    async with asyncio.timeout(30):
        await connections.all_closed()
