"""The HTTP transport to the generator worker's Unix socket, on an asyncio protocol instead of a raw socket.

httpx reaches a Unix socket through httpcore's anyio backend, and anyio's Unix socket stream waits for data
with `loop.add_reader(sock, future.set_result, None)`, removing the reader only in the future's done
callback, which runs a loop turn later. When a read is cancelled (a panel closes its forwarded event stream)
just as data arrives, uvloop calls the reader on the cancelled future first: "Exception in callback
Future.set_result ... InvalidStateError: invalid state", a traceback in the log for each such panel under
load. anyio's other socket stream, the one it uses for TCP, is an asyncio protocol (the loop reads into it;
nothing waits on a future per read) and takes any connected stream socket, a Unix one included. This
backend connects the socket itself and hands it to that stream; everything else is httpcore's.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from pathlib import Path

import anyio.abc
import httpcore
import httpx
from httpcore._backends.anyio import AnyIOStream  # httpcore's own wrapper of an anyio stream
from httpcore._backends.base import SOCKET_OPTION


class ProtocolUnixBackend(httpcore.AnyIOBackend):
    """httpcore's anyio backend, whose Unix socket connections are asyncio protocol streams."""

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[SOCKET_OPTION] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            for option in socket_options or ():
                sock.setsockopt(*option)
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, path)
            stream = await anyio.abc.SocketStream.from_socket(sock)
        except TimeoutError:
            sock.close()
            raise httpcore.ConnectTimeout(f"connecting to {path} took over {timeout:g}s") from None
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        return AnyIOStream(stream)


def socket_transport(path: Path, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """An httpx transport to the Unix socket at `path`, its connection pool on `ProtocolUnixBackend`.

    httpx takes no network backend, so its pool (the `_pool` every httpx transport has had since 0.18) is
    replaced by the same pool with that backend; the forwarding tests fail if that ever stops working."""
    transport = httpx.AsyncHTTPTransport(uds=str(path), limits=limits)
    transport._pool = httpcore.AsyncConnectionPool(
        uds=str(path), max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        network_backend=ProtocolUnixBackend())
    return transport
