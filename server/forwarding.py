"""The owner's requests reach the generator from any worker or replica: they are forwarded to the one
process that runs it, which answers them as if they had come to it.

Among the workers of one machine the generator's worker also listens on a Unix socket in `data_dir`
(`generator.sock`, readable by the server's user only); the others forward over it, streams included,
so the status, the refill and abort answers and the event stream (with its event ids) are that
worker's own. Among replicas that share a Redis, a request and its answer travel through Redis: the
requests go into a list the generator's replica reads, each answer into a key of its own that the
replica forwarding it waits on. The event stream is not forwarded there: the events come through the
relay (`avatargen.storage.redis.events`) into every replica's own hub.

The owner has been checked (address, token) by the process the request came to; the generator's process
answers forwarded requests without checking again, on a socket or in a Redis only its peers reach.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import uvicorn
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp

from avatargen.embedded_server import EmbeddedServer
from avatargen.storage.errors import StorageUnavailable
from avatargen.storage.redis.connection import Outage, RedisStorage
from server.socket_transport import socket_transport

log = logging.getLogger("avatargen.server")

# How long a forwarded request may take, the generator's process included; a refill answers in milliseconds.
FORWARD_TIMEOUT = 10.0
# How soon a request is sent again while nobody listens on the generator's socket yet.
CONNECT_RETRY = 0.05
# Headers a forwarded request keeps (what the handlers read); the rest belong to the hop.
_KEPT_HEADERS = ("content-type", "last-event-id", "accept")
_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"})


class GeneratorUnreachable(Exception):
    """The process that runs the generator did not answer a forwarded request (starting, or gone)."""


class Forwarder(Protocol):
    """Sends an owner's request to the process that runs the generator and returns its answer."""

    streams: bool  # whether the event stream can be forwarded (else each process relays the events itself)

    async def forward(self, request: Request, *, stream: bool = False) -> Response:
        """`stream`: the answer is an event stream, open for as long as the panel is."""
        ...

    async def aclose(self) -> None: ...


async def read_answer(answer: Response) -> bytes:
    """The whole body of a forwarded answer (a streamed one is read to its end and closed)."""
    if not isinstance(answer, StreamingResponse):
        return bytes(answer.body)
    try:
        chunks = [chunk async for chunk in answer.body_iterator]
        return b"".join(chunk.encode() if isinstance(chunk, str) else bytes(chunk) for chunk in chunks)
    finally:
        if answer.background is not None:
            await answer.background()


def _kept_headers(request: Request) -> dict[str, str]:
    return {name: value for name, value in request.headers.items() if name in _KEPT_HEADERS}


def _answer_headers(headers: httpx.Headers) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.lower() not in _HOP_HEADERS}


# --- workers of one machine: a Unix socket ----------------------------------------------------------------


class SocketForwarder:
    """Forwards over the generator worker's Unix socket, streaming the answer through (events included).

    Event streams and the owner's other requests go through separate connection pools: each open panel
    holds a connection for as long as it is open, and however many are open, a refill or an abort must not
    wait for one of them to close. The streams' pool has no limit (each stream is a panel the owner's token
    opened, and the generator's worker answers it either way); the requests' pool keeps httpx's limit.
    """

    streams = True

    def __init__(self, path: Path, *, timeout: float = FORWARD_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._requests = self._client(httpx.Limits())
        self._streams = self._client(httpx.Limits(max_connections=None, max_keepalive_connections=0))

    def _client(self, limits: httpx.Limits) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=socket_transport(self.path, limits),
                                 base_url="http://generator", timeout=httpx.Timeout(self.timeout, read=None))

    async def forward(self, request: Request, *, stream: bool = False) -> Response:
        """Forward, waiting up to `timeout` while nobody listens on the socket yet (the generator's worker is
        starting, or another is taking over from one that died), as a request through Redis waits for the
        generator's replica. Only a request that never reached the generator is sent again."""
        client = self._streams if stream else self._requests
        outgoing = client.build_request(request.method, request.url.path, params=request.query_params,
                                        headers=_kept_headers(request), content=await request.body())
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.timeout
        while True:
            try:
                answer = await client.send(outgoing, stream=True)
                break
            except httpx.ConnectError as exc:
                if loop.time() >= give_up_at:
                    raise GeneratorUnreachable(f"the worker that runs the generator does not answer ({exc})") from None
                await asyncio.sleep(CONNECT_RETRY)
            except httpx.TransportError as exc:
                raise GeneratorUnreachable(f"the worker that runs the generator does not answer "
                                           f"({exc or type(exc).__name__})") from None
        return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code,
                                 headers=_answer_headers(answer.headers), background=BackgroundTask(answer.aclose))

    async def aclose(self) -> None:
        await asyncio.gather(self._requests.aclose(), self._streams.aclose())


@contextlib.asynccontextmanager
async def serving_on_socket(app: ASGIApp, path: Path) -> AsyncIterator[None]:
    """`app` answering on a Unix socket at `path` (only this user may connect) while the block runs."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a worker that died: nobody listens on it any more
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    server = EmbeddedServer(uvicorn.Config(app, lifespan="off", log_config=None, log_level=None, access_log=False,
                                           timeout_graceful_shutdown=1))
    task = server.serve_task(sock, name=f"answering on {path}")
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# --- replicas sharing a Redis ----------------------------------------------------------------------------


class RedisForwarder:
    """Forwards through Redis: the request into the generator's list, the answer back in a key of its own."""

    streams = False

    def __init__(self, storage: RedisStorage, *, timeout: float = FORWARD_TIMEOUT) -> None:
        self.storage = storage
        self.timeout = timeout
        self._requests = storage.key("admin", "requests")

    async def forward(self, request: Request, *, stream: bool = False) -> Response:
        request_id = secrets.token_hex(8)
        reply_key = self.storage.key("admin", "reply", request_id)
        payload = {"id": request_id, "deadline": time.time() + self.timeout, "method": request.method,
                   "path": request.url.path, "query": str(request.query_params),
                   "headers": _kept_headers(request), "body": base64.b64encode(await request.body()).decode()}
        try:
            async with self.storage.guard("pass the request to the generator's replica"):
                await self.storage.client.rpush(self._requests, json.dumps(payload))
            waited = self.timeout + self.storage.timeout
            async with self.storage.guard("wait for the generator's replica", timeout=waited):
                reply: Any = await self.storage.blocking_client().blpop([reply_key], timeout=self.timeout)
        except StorageUnavailable as exc:
            raise GeneratorUnreachable(str(exc)) from None
        if reply is None:
            raise GeneratorUnreachable(f"no replica answered for the generator within {self.timeout:g}s "
                                       "(one takes over within the lease's time when its holder died)")
        answer = json.loads(reply[1])
        return Response(base64.b64decode(answer["body"]), status_code=answer["status"], headers=answer["headers"])

    async def aclose(self) -> None:
        """Nothing to close: the client belongs to the process's storage."""


class RedisForwardReceiver:
    """The generator's side of `RedisForwarder`: answers the forwarded requests with `app` (the admin API
    without the owner check), for as long as it runs. Requests past their deadline are dropped unanswered:
    their sender has given up, and a refill long asked for must not start now."""

    def __init__(self, storage: RedisStorage, app: ASGIApp) -> None:
        self.storage = storage
        self._requests = storage.key("admin", "requests")
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://generator",
                                         timeout=FORWARD_TIMEOUT)
        self._outage = Outage("owners' requests to other replicas do not reach the generator",
                              "owners' requests reach the generator from every replica")

    async def run(self) -> None:
        """Take requests off the list and answer each in a task of its own, until cancelled."""
        async with asyncio.TaskGroup() as answering:
            try:
                while True:
                    request = await self._next()
                    if request is not None:
                        answering.create_task(self._answer(request))
            finally:
                await self._client.aclose()

    async def _next(self) -> dict[str, Any] | None:
        try:
            async with self.storage.guard("read owners' requests", timeout=1.0 + self.storage.timeout):
                item: Any = await self.storage.blocking_client().blpop([self._requests], timeout=1)
        except StorageUnavailable as exc:
            self._outage.failed(exc)
            await asyncio.sleep(1.0)
            return None
        self._outage.ended()
        if item is None:
            return None
        request = json.loads(item[1])
        return request if request["deadline"] > time.time() else None

    async def _answer(self, request: dict[str, Any]) -> None:
        answer = await self._client.request(request["method"], request["path"], params=request["query"],
                                            headers=request["headers"], content=base64.b64decode(request["body"]))
        reply = {"status": answer.status_code, "headers": _answer_headers(answer.headers),
                 "body": base64.b64encode(answer.content).decode()}
        reply_key = self.storage.key("admin", "reply", request["id"])
        with contextlib.suppress(StorageUnavailable):  # the sender gets "no answer", which is true
            async with self.storage.guard("answer an owner's request"), \
                    self.storage.client.pipeline(transaction=True) as pipe:
                pipe.rpush(reply_key, json.dumps(reply))
                pipe.expire(reply_key, round(FORWARD_TIMEOUT))
                await pipe.execute()
