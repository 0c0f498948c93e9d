"""Who a visitor is, for the one-unique-per-visitor rule.

The address comes from `request.client`, which uvicorn has already rewritten from X-Forwarded-For when
(and only when) the peer is one of `server.trusted_proxies`; a handler never reads that header itself,
or anyone could claim a fresh unique per request by writing it.
"""

from __future__ import annotations

import ipaddress

# Requests without a client address (a unix socket behind a proxy that does not forward it) are all
# one visitor: the alternative, a fresh visitor per request, would hand out uniques to anyone.
SHARED_VISITOR = "shared"


def visitor_key(host: str | None, ipv6_prefix: int = 64) -> str:
    """The key a visitor is limited by: the IPv4 address, or the network (default /64) of an IPv6 address.

    One IPv6 client usually holds a whole /64, so keying on the full address would let it change
    address per request; a site usually holds a /48 or a /56, so `serving.unique_per_network` may widen
    the key to that. IPv4-mapped IPv6 addresses count as their IPv4 address. A host that is not an IP
    address (a test client's name) is its own key.
    """
    if host is None:
        return SHARED_VISITOR
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        host_bits = 128 - ipv6_prefix
        return str(ipaddress.IPv6Network((int(address) >> host_bits << host_bits, ipv6_prefix)))
    return str(address)
