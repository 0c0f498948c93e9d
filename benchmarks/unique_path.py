"""Unique path: how long claiming, framing, encoding and sending one unique takes, seen from the visitor.

A real `avatargen serve` process holds published uniques (framed at publish time by the bucket's
`prepare`) and an allowance that always grants: unique_burst large, unique_every tiny. One client sends
sequential requests over one keep-alive connection, each from a distinct visitor address (X-Forwarded-For,
believed from 127.0.0.1), and times each request. Every answer must be a unique, never the same one
twice, and byte for byte the framed variant asked for (by default AVIF, as browsers ask with
`Accept: image/avif,image/webp`, at the stored size; the visitor's face is remembered too). For scale,
the same client against the bare Starlette reference (the same bytes from memory) gives the floor of
HTTP on this machine.
Target: median 2 ms or less.

    python -m benchmarks.unique_path [--quick] [--uniques N]
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time
from pathlib import Path

from avatargen.config import load_settings
from avatargen.storage.files.bucket import open_buckets
from avatargen.testing import Service, free_port
from avatargen.variants import unpack
from benchmarks.harness import (
    avatargen_server,
    parse_args,
    publish,
    sample_avatars,
    scratch,
    write_config,
)
from benchmarks.report import fmt, median, percentile, print_machine, print_table, verdict
from server.avatar_request import AvatarRequests

TARGET_MS = 2.0
BROWSER_ACCEPT = "image/avif,image/webp"


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uniques", type=int, default=500, help="uniques to claim (default 500)")
    parser.add_argument("--accept", default=BROWSER_ACCEPT, help=f"the Accept header sent (default {BROWSER_ACCEPT!r})")
    parser.add_argument("--size", type=int, default=0, help="?s= sent (default: none, the stored size)")


def visitor_address(n: int) -> str:
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def timed_gets(port: int, visitors: range, path: str = "/avatar",
               accept: str = BROWSER_ACCEPT) -> list[tuple[float, http.client.HTTPResponse, bytes]]:
    """Sequential GETs of `path` on one connection, one per visitor number: (ms, response, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = []
    try:
        for n in visitors:
            started = time.perf_counter()
            connection.request("GET", path, headers={"X-Forwarded-For": visitor_address(n), "Accept": accept})
            response = connection.getresponse()
            body = response.read()
            answers.append(((time.perf_counter() - started) * 1000, response, body))
    finally:
        connection.close()
    return answers


def check_uniques(answers: list[tuple[float, http.client.HTTPResponse, bytes]], framed: dict[str, bytes]) -> None:
    """Each answer a unique, each unique once, each exactly its framed image."""
    seen: set[str] = set()
    for _, response, body in answers:
        kind, image_id = response.getheader("X-Avatar-Kind"), response.getheader("X-Avatar-Id") or ""
        if response.status != 200 or kind != "unique":
            raise SystemExit(f"expected a unique, got {response.status} {kind!r}: the allowance did not grant")
        if image_id in seen or image_id not in framed:
            raise SystemExit(f"unique {image_id!r} was served twice or was never published")
        if body != framed[image_id]:
            raise SystemExit(f"unique {image_id!r} is not byte for byte its framed image")
        seen.add(image_id)


def row(name: str, milliseconds: list[float]) -> list[str]:
    return [name, str(len(milliseconds)), fmt(median(milliseconds), 3), fmt(percentile(milliseconds, 99), 3)]


def main() -> int:
    args = parse_args(__doc__.split("\n")[0], options)
    count = 20 if args.quick else args.uniques
    print_machine()
    with scratch() as work:
        config = write_config(work, {
            "serving": {"unique_burst": count * 10, "unique_every": "1ms", "unique_per_visitor": "24h"},
            "buckets": {"unique": {"max": count + 1}},
        })
        settings = load_settings(config)
        unique = open_buckets(settings)["unique"]
        assert unique.prepare is not None
        avatars = sample_avatars(count + 1, settings.generator.image_size, settings.generator.webp_quality)
        originals = dict(zip(publish(unique, avatars), avatars, strict=True))
        wanted = AvatarRequests(settings.sizes).wanted(f"s={args.size}".encode() if args.size else b"", args.accept)
        framed = {image_id: unpack(unique.prepare(original), wanted.member) for image_id, original in originals.items()}
        if any(framed[image_id] == original for image_id, original in originals.items()):
            raise SystemExit("framing left an image unchanged")
        path = f"/avatar?s={args.size}" if args.size else "/avatar"
        with avatargen_server(config, work / "avatargen.log") as server:
            timed_gets(server.port, range(1), path, args.accept)  # warm-up: takes one unique, not measured
            answers = timed_gets(server.port, range(1, count + 1), path, args.accept)
        check_uniques(answers, framed)
        leftovers = [path.name for path in Path(settings.buckets.unique.dir).rglob("*.webp")]
        if leftovers:
            raise SystemExit(f"served uniques were not deleted: {leftovers[:5]}")
        floor = reference_floor(work, next(iter(framed.values())), count)
    unique_ms = [milliseconds for milliseconds, _, _ in answers]
    middle = median(unique_ms)
    print_table("Unique path: GET /avatar that claims, frames and sends one unique", [
        "server", "requests", "median ms", "p99 ms"], [
        row("avatargen (unique)", unique_ms),
        row("bare Starlette (same bytes from memory)", floor),
    ], [
        "sequential requests on one keep-alive connection, each from its own visitor address; client time per "
        f"request (http.client), uniques pre-framed at publish time; {path} with Accept: {args.accept} "
        f"({wanted.form.media_type}, {wanted.size} px)",
        f"target: median <= {TARGET_MS:g} ms: {fmt(middle, 3)} ms, {verdict(middle <= TARGET_MS)}",
    ])
    return 0


def reference_floor(work: Path, image: bytes, count: int) -> list[float]:
    """The same client against the bare Starlette reference serving the same bytes: HTTP's own cost."""
    path = work / "framed.webp"
    path.write_bytes(image)
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.reference_app", "--image", str(path), "--id", "reference",
               "--port", str(port)]
    with Service("bare Starlette", command, port=port, log=work / "starlette.log", health_path="/avatar"):
        timed_gets(port, range(1))
        return [milliseconds for milliseconds, _, _ in timed_gets(port, range(1, count + 1))]


if __name__ == "__main__":
    sys.exit(main())
