"""Slow and oversized request headers and the visitor's address: `avatargen serve` alone, and behind the
documented nginx example (deploy/nginx-avatargen.conf, used as shipped but for its two ports).

uvicorn sets no deadline for a request's headers: its keep-alive timeout runs only between requests, and
the first byte of a request cancels it. So a client sending its headers one byte a second holds a
connection as long as it likes (slowloris). The example's client_header_timeout closes it; its header
buffers refuse a 1 MB header; and it passes the visitor's own address on in X-Forwarded-For, which
avatargen believes from the proxy only: with admin.allow_from = ["127.0.0.2/32"], the admin API answers
a client on 127.0.0.2 through the proxy, and refuses 127.0.0.3 even when it sends a forged
X-Forwarded-For. Exits 1 when the example does not hold.

    python -m benchmarks.proxy_limits [--quick]
"""

from __future__ import annotations

import re
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from avatargen.testing import free_port
from benchmarks.harness import ADMIN_TOKEN, ROOT, avatargen_server, parse_args, scratch, write_config
from benchmarks.nginx import nginx
from benchmarks.report import print_machine, print_table, verdict

EXAMPLE = ROOT / "deploy" / "nginx-avatargen.conf"
BIG_HEADER = 1_000_000
ALLOWED, OTHER = "127.0.0.2", "127.0.0.3"


def proxy_site(app_port: int, proxy_port: int) -> str:
    """The shipped example with its ports swapped for free ones: nothing else is changed."""
    site = EXAMPLE.read_text()
    for shipped, used in (("listen 80;", f"listen 127.0.0.1:{proxy_port};"),
                          ("http://127.0.0.1:8080", f"http://127.0.0.1:{app_port}")):
        if shipped not in site:
            raise SystemExit(f"{EXAMPLE} no longer holds {shipped!r}: update this script with it")
        site = site.replace(shipped, used)
    return "\n".join("    " + line for line in site.splitlines())


def slow_headers(port: int, patience: float) -> str:
    """Send a request's headers one byte a second; what the server did within `patience` seconds."""
    request = b"GET /healthz HTTP/1.1\r\nHost: avatars.example.com\r\nX-Slow: " + b"a" * int(patience * 2)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.settimeout(1.0)
        for byte in request:
            if time.monotonic() - started > patience:
                return f"still open after {patience:.0f} s"
            try:
                connection.sendall(bytes([byte]))
                answer = connection.recv(200)
            except TimeoutError:
                continue
            except OSError:
                answer = b""
            status = re.match(rb"HTTP/1\.1 (\d+)", answer)
            return f"closed after {time.monotonic() - started:.1f} s" + (
                f" ({status.group(1).decode()})" if status else "")
    return "the whole request was sent"


def big_header(port: int) -> str:
    """The answer to a request with a 1 MB header."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Big": "a" * BIG_HEADER}, timeout=30)
    except httpx.TransportError as exc:
        return f"connection dropped ({type(exc).__name__})"
    return f"{response.status_code} ({'accepted' if response.is_success else 'refused'})"


def admin_from(port: int, source: str, forged: str | None = None) -> str:
    """The admin API's answer to a client on `source`, sending a forged X-Forwarded-For if given."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} | ({"X-Forwarded-For": forged} if forged else {})
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10) as client:
        return str(client.get(f"http://127.0.0.1:{port}/admin/api/status", headers=headers).status_code)


def implementations(log: Path) -> str:
    found = re.search(r"uvicorn with [\w ]+", log.read_text(errors="replace"))
    return found.group(0) if found else "uvicorn"


def main() -> int:
    args = parse_args(__doc__.split("\n")[0])
    patience = 15.0 if args.quick else 30.0  # past the example's client_header_timeout (10 s) either way
    print_machine()
    with scratch() as work:
        config = write_config(work, {"admin": {"allow_from": [f"{ALLOWED}/32"]}})
        with avatargen_server(config, work / "avatargen.log") as app:
            proxy_port = free_port()
            with nginx("nginx (deploy example)", proxy_site(app.port, proxy_port), work / "nginx", proxy_port,
                       "/healthz") as proxy, ThreadPoolExecutor() as pool:
                slow = [pool.submit(slow_headers, port, patience) for port in (app.port, proxy.port)]
                rows = [
                    ["request headers sent one byte a second", *(future.result() for future in slow)],
                    [f"a {BIG_HEADER:,}-byte request header", big_header(app.port), big_header(proxy.port)],
                    [f"admin API from {ALLOWED} (allow_from = [\"{ALLOWED}/32\"])", admin_from(app.port, ALLOWED),
                     admin_from(proxy.port, ALLOWED)],
                    [f"admin API from {OTHER} with a forged X-Forwarded-For: {ALLOWED}",
                     admin_from(app.port, OTHER, ALLOWED), admin_from(proxy.port, OTHER, ALLOWED)],
                ]
        stack = implementations(work / "avatargen.log")
    behind = [row[2] for row in rows]
    holds = (behind[0].startswith("closed after") and "refused" in behind[1] and behind[2] == "200"
             and behind[3] == "403")
    print_table("Slow and oversized headers, and the visitor's address, with and without a proxy", [
        "check", "avatargen serve alone", "behind the nginx example"], rows, [
        f"avatargen serve ({stack}) on loopback, and nginx with deploy/nginx-avatargen.conf in front of it; "
        f"the slow client gives up after {patience:.0f} s",
        f"the example holds (closes slow headers, refuses the big header, forwards the address, drops the forgery): "
        f"{verdict(holds)}",
    ])
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
