"""What every HTTP API client of avatargen shares: one connection pool, closed by whoever opened it.

A client opens its own `httpx.AsyncClient` unless it is handed one (tests, or several clients sharing a
pool); it closes only a pool it opened, so a shared one outlives it. Use it as `async with`.
"""

from __future__ import annotations

from typing import Self

import httpx


class HttpClient:
    """Base of the API clients (cloud GPU APIs, the SD backend): owns or borrows an httpx pool."""

    def __init__(self, http: httpx.AsyncClient | None, *, timeout: httpx.Timeout | float) -> None:
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)
        self._owns_http = http is None

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
