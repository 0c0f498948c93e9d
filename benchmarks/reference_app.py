"""The framework's ceiling: a bare Starlette route answering `GET /avatar` with bytes held in memory.

Same image bytes, same headers and the same uvicorn settings as `avatargen serve` (see server/serve.py),
and nothing else: no buckets, no allowance, no cache. What avatargen adds on top of this is its own cost.
A request with If-Modified-Since gets the same 304 avatargen gives a fresh copy.

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
from server.serve import uvicorn_options


def create_reference_app(image: bytes, image_id: str, max_age: float) -> Starlette:
    cache_control = f"private, max-age={int(max_age)}"

    async def avatar(request: Request) -> Response:
        if request.headers.get("if-modified-since"):
            return Response(status_code=304, headers={"Cache-Control": cache_control})
        headers = {"Cache-Control": cache_control, "Last-Modified": formatdate(time.time(), usegmt=True),
                   "X-Avatar-Kind": "fallback", "X-Avatar-Id": image_id}
        return Response(image, media_type="image/webp", headers=headers)

    return Starlette(routes=[Route("/avatar", avatar, methods=["GET"])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference_app", description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path, required=True, help="the WebP file to serve")
    parser.add_argument("--id", required=True, help="the X-Avatar-Id to send")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = create_reference_app(args.image.read_bytes(), args.id, ServingSettings().cache_max_age)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", **uvicorn_options(ServerSettings()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
