"""What every HTTP client of avatargen shares: one connection pool, closed by whoever opened it.

A client opens its own `httpx.AsyncClient` unless it is handed one (tests, or several clients sharing a
pool); it closes only a pool it opened, so a shared one outlives it. Use it as `async with`.

The cloud GPU APIs, the SD backends and the admin API's client (`avatargen.api`) all build on it, so it
imports nothing of avatargen: any of them, the control panel's included, may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

import httpx


class HttpClient:
    """Base of the HTTP clients (cloud GPU APIs, SD backends, the admin API): owns or borrows an httpx pool."""

    def __init__(self, http: httpx.AsyncClient | None, *, timeout: httpx.Timeout | float,
                 headers: Mapping[str, str] | None = None, base_url: str = "") -> None:
        """Borrow `http`, or (without it) open a pool of its own with `timeout`, `headers` and `base_url`:
        those apply only to a pool it opens, as a borrowed one keeps its owner's settings."""
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout, headers=headers,
                                                                     base_url=base_url)
        self._owns_http = http is None

    @property
    def http(self) -> httpx.AsyncClient:
        """The pool this client sends through, its own or a borrowed one."""
        return self._http

    async def aclose(self) -> None:
        """Close the pool if this client opened it; a borrowed one stays open for its owner."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
