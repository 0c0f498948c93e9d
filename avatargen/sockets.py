"""TCP sockets bound before their server starts.

Binding first holds the address from the first moment, so a port that is taken is known before anything
else is started or touched; uvicorn then serves on the socket (`Server.serve(sockets=[...])`).
"""

from __future__ import annotations

import socket


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port, not yet listening (uvicorn's rules: IPv6 when the host has a colon,
    SO_REUSEADDR so a restart need not wait for old connections); OSError when the address cannot be had."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
