"""Who may use the admin API: middleware on its Mount, so no route can be added without it.

The resolved client address is checked first (403 whatever the token, so an outsider learns nothing
about tokens), then the bearer token with a constant-time comparison (401). Both read the Services the
lifespan built, because the token may be generated at start-up.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_allowed(host: str | None, networks: Sequence[Network]) -> bool:
    """Whether a client address lies in one of the networks (an IPv4-mapped IPv6 address counts as IPv4)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def token_matches(authorization: str, expected: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


class OwnerOnly:
    """ASGI middleware: 403 outside `admin.allow_from`, then 401 without the right bearer token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            services = request.app.state.services
            if not address_allowed(request.client.host if request.client else None, services.admin_networks):
                raise HTTPException(403, "the admin API does not answer this address (see [admin] allow_from)")
            if not token_matches(request.headers.get("authorization", ""), services.token.reveal()):
                raise HTTPException(401, "missing or wrong admin token", headers={"WWW-Authenticate": "Bearer"})
        await self.app(scope, receive, send)
