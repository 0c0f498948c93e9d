"""TCP sockets bound before their server starts.

Binding first holds the address from the first moment, so a port that is taken is known before anything
else is started or touched; uvicorn then serves on the socket (`Server.serve(sockets=[...])`).
"""

from __future__ import annotations

import socket


def bound_socket(host: str, port: int, *, reuse_address: bool = True, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to host:port, not yet listening (uvicorn's rules: IPv6 when the host has a colon,
    SO_REUSEADDR so a restart need not wait for old connections); OSError when the address cannot be had.

    `reuse_port`: SO_REUSEPORT, so sockets of this user that ask for it too may share the port: a socket
    bound with it and without SO_REUSEADDR (`reuse_address=False`), never listening, holds the port while
    servers come and go on it, and no other server can bind it meanwhile (Linux lets two SO_REUSEADDR
    sockets share a port as long as neither listens)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
