"""Owner's requests forwarded to the process that runs the generator: through a real Redis between
replicas, over a Unix socket between workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from avatargen.config import StorageSettings
from avatargen.storage.redis.connection import RedisStorage
from avatargen.tasks import background
from avatargen.testing import RedisServer
from server.forwarding import (
    Forwarder,
    GeneratorUnreachable,
    RedisForwarder,
    RedisForwardReceiver,
    SocketForwarder,
    serving_on_socket,
)


def generator_app() -> Starlette:
    """Stands in for the admin API of the process that runs the generator."""
    async def echo(request: Request) -> Response:
        return JSONResponse({"method": request.method, "query": dict(request.query_params),
                             "body": (await request.body()).decode(), "type": request.headers.get("content-type")},
                            status_code=202, headers={"X-From": "generator"})

    return Starlette(routes=[Route("/admin/api/refill", echo, methods=["POST"])])


def front(forwarder: Forwarder) -> httpx.AsyncClient:
    """A replica that does not run the generator: forwards everything."""
    async def forward(request: Request) -> Response:
        try:
            return await forwarder.forward(request)
        except GeneratorUnreachable as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

    app = Starlette(routes=[Route("/admin/api/{rest:path}", forward, methods=["GET", "POST"])])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica")


@pytest.fixture
async def storage(redis_server: RedisServer) -> AsyncIterator[RedisStorage]:
    storage = RedisStorage.connect(StorageSettings(backend="redis", url=redis_server.url, timeout=10.0))
    yield storage
    await storage.aclose()


async def check_forwarded(client: httpx.AsyncClient) -> None:
    answer = await client.post("/admin/api/refill?dry=1", json={"buckets": ["unique"]})
    assert answer.status_code == 202
    assert answer.headers["x-from"] == "generator"
    assert answer.json() == {"method": "POST", "query": {"dry": "1"}, "body": '{"buckets":["unique"]}',
                             "type": "application/json"}


async def test_through_redis(storage: RedisStorage) -> None:
    receiver = RedisForwardReceiver(storage, generator_app())
    async with background(receiver.run(), "receiver"), front(RedisForwarder(storage)) as client:
        await check_forwarded(client)
        answers = await asyncio.gather(*(client.post("/admin/api/refill", content=str(n)) for n in range(20)))
        assert sorted(int(answer.json()["body"]) for answer in answers) == list(range(20))


async def test_through_redis_with_nobody_to_answer(storage: RedisStorage) -> None:
    async with front(RedisForwarder(storage, timeout=0.3)) as client:
        answer = await client.post("/admin/api/refill")
    assert answer.status_code == 503 and "no replica answered" in answer.json()["error"]
    # The request left behind is past its deadline: a generator that takes over later drops it.
    served = []

    def counting_app() -> Starlette:
        async def refill(request: Request) -> Response:
            served.append(request)
            return Response(status_code=202)
        return Starlette(routes=[Route("/admin/api/refill", refill, methods=["POST"])])

    receiver = RedisForwardReceiver(storage, counting_app())
    async with background(receiver.run(), "receiver"), front(RedisForwarder(storage)) as client:
        assert (await client.post("/admin/api/refill")).status_code == 202
    assert len(served) == 1


async def test_through_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "generator.sock"
    async with serving_on_socket(generator_app(), path):
        assert path.stat().st_mode & 0o777 == 0o600
        forwarder = SocketForwarder(path)
        async with front(forwarder) as client:
            await check_forwarded(client)
        await forwarder.aclose()
    forwarder = SocketForwarder(path, timeout=0.3)
    async with front(forwarder) as client:
        answer = await client.post("/admin/api/refill")
    await forwarder.aclose()
    assert answer.status_code == 503 and "does not answer" in answer.json()["error"]


async def test_a_request_waits_for_the_generators_worker_to_listen(tmp_path: Path) -> None:
    """Right after start-up (or a take-over) nobody listens on the socket yet: the request waits for it."""
    path = tmp_path / "generator.sock"
    forwarder = SocketForwarder(path)
    async with front(forwarder) as client:
        asked = asyncio.create_task(client.post("/admin/api/refill?dry=1", json={"buckets": ["unique"]}))
        waited, _ = await asyncio.wait({asked}, timeout=0.5)
        assert not waited, "answered before anyone listened"
        async with serving_on_socket(generator_app(), path):
            answer = await asked
    await forwarder.aclose()
    assert answer.status_code == 202 and answer.headers["x-from"] == "generator"
