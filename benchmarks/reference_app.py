"""The framework's ceiling: a bare Starlette route answering `GET /avatar` with bytes held in memory.

Same image bytes, same headers and the same uvicorn settings as `avatargen serve` (see server/serve.py),
and nothing else: no buckets, no allowance, no cache. What avatargen adds on top of this is its own cost.
A request with If-Modified-Since gets the same 304 avatargen gives a fresh copy. With `--variant` files, a
request with a query string (`?s=64`) gets one of them instead: the AVIF one when Accept lists image/avif,
else the JPEG one (the same bytes avatargen sends for that variant).

    python -m benchmarks.reference_app --image PATH --id ID --port PORT
"""

from __future__ import annotations

import argparse
import sys
import time
from email.utils import formatdate
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from avatargen.config import ServerSettings, ServingSettings
from avatargen.variants import BY_NAME
from server.serve import uvicorn_options


def create_reference_app(image: bytes, image_id: str, max_age: float,
                         variants: dict[str, bytes] | None = None) -> Starlette:
    """`variants`: by format name ("avif", "jpg"), the bytes answered to a request with a query string."""
    cache_control = f"private, max-age={int(max_age)}"
    variants = variants or {}

    async def avatar(request: Request) -> Response:
        if request.headers.get("if-modified-since"):
            return Response(status_code=304, headers={"Cache-Control": cache_control, "Vary": "Accept"})
        headers = {"Cache-Control": cache_control, "Last-Modified": formatdate(time.time(), usegmt=True),
                   "ETag": f'"{image_id}"', "Vary": "Accept", "X-Avatar-Kind": "fallback", "X-Avatar-Id": image_id}
        if variants and request.url.query:
            name = "avif" if "image/avif" in request.headers.get("accept", "") else "jpg"
            return Response(variants[name], media_type=BY_NAME[name].media_type, headers=headers)
        return Response(image, media_type="image/webp", headers=headers)

    return Starlette(routes=[Route("/avatar", avatar, methods=["GET"])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference_app", description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path, required=True, help="the WebP file to serve")
    parser.add_argument("--id", required=True, help="the X-Avatar-Id to send")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--variant", action="append", default=[], metavar="FORMAT=PATH",
                        help="a variant answered to requests with a query string (avif=PATH, jpg=PATH)")
    args = parser.parse_args(argv)
    variants = {name: Path(path).read_bytes() for name, _, path in (item.partition("=") for item in args.variant)}
    app = create_reference_app(args.image.read_bytes(), args.id, ServingSettings().cache_max_age, variants)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", **uvicorn_options(ServerSettings()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
