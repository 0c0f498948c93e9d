"""The owner's admin API: status, live events, thumbnails, prompt settings, refill and abort.

Every route checks the resolved client address against `admin.allow_from` first (403), then the bearer
token with a constant-time comparison (401). Errors are always `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from avatargen import prompts as prompt_composer
from avatargen.buckets import ImageNotFound, check_id
from avatargen.config import ConfigError, update_prompts
from avatargen.events import ListenerTooSlow
from avatargen.generator import Generator, NothingToDo, NotRunning, RunActive
from server.services import Services

HEARTBEAT_SECONDS = 15.0
Handler = Callable[[Request], Awaitable[Response]]


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def services(request: Request) -> Services:
    return request.app.state.services


def _allowed(request: Request, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    host = request.client.host if request.client else None
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def owner_only(handler: Handler) -> Handler:
    """Address check first (403 whatever the token), then the bearer token (401)."""

    async def guarded(request: Request) -> Response:
        state = services(request)
        if not _allowed(request, state.admin_networks):
            return error(403, "the admin API does not answer this address (see [admin] allow_from)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = state.token.reveal().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            return JSONResponse({"error": "missing or wrong admin token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return guarded


async def _json_body(request: Request) -> dict[str, Any] | JSONResponse:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return error(400, "the request body is not valid JSON")
    if not isinstance(body, dict):
        return error(422, "the request body must be a JSON object")
    return body


async def status(request: Request) -> Response:
    return JSONResponse(services(request).status())


async def events(request: Request) -> Response:
    hub = services(request).events
    raw_last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    try:
        last_id = int(raw_last) if raw_last else None
    except ValueError:
        return error(422, f"Last-Event-ID must be an event number, got {raw_last!r}")

    async def stream() -> AsyncIterator[str]:
        with hub.subscribe(last_id) as subscription:
            yield f"retry: 2000\n: connected, last event {hub.last_id}\n\n"
            while True:
                try:
                    event = await subscription.next(HEARTBEAT_SECONDS)
                except ListenerTooSlow:
                    return  # the client reconnects with Last-Event-ID and catches up from the history
                if event is None:
                    yield ": ping\n\n"
                    continue
                yield f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _bucket_name(state: Services, name: str | None, status: int) -> str | JSONResponse:
    """The bucket named by a request; unknown: 404 in a path, 422 in a parameter."""
    if name not in state.buckets:
        return error(status, f"unknown bucket {name!r}; buckets are unique and fallback")
    return name


def image_summary(record: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "bucket": record.bucket,
        "prompt": record.metadata.get("prompt"),
        "created_at": record.metadata.get("created_at"),
        "url": f"/admin/api/images/{record.bucket}/{record.id}",
        "metadata": record.metadata,
    }


async def images(request: Request) -> Response:
    state = services(request)
    name = _bucket_name(state, request.query_params.get("bucket", "unique"), 422)
    if isinstance(name, JSONResponse):
        return name
    try:
        limit = int(request.query_params.get("limit", "24"))
    except ValueError:
        return error(422, "limit must be a whole number")
    if not 1 <= limit <= 500:
        return error(422, "limit must be between 1 and 500")
    records = await asyncio.to_thread(state.buckets[name].newest, limit)
    return JSONResponse({"images": [image_summary(record) for record in records]})


async def image(request: Request) -> Response:
    state = services(request)
    name = _bucket_name(state, request.path_params["bucket"], 404)
    if isinstance(name, JSONResponse):
        return name
    image_id = request.path_params["image_id"]
    try:
        data = await asyncio.to_thread(state.buckets[name].read, check_id(image_id))
    except (ImageNotFound, ValueError, FileNotFoundError):
        return error(404, f"no image {image_id!r} in the {name} bucket")
    return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=3600"})


def invalid_prompts(exc: ConfigError) -> JSONResponse:
    """422 naming the [prompts] setting at fault by its config name, for the TUI to show by its field."""
    return error(422, exc.message, field=(exc.key or "").removeprefix("prompts."))


async def get_prompts(request: Request) -> Response:
    return JSONResponse(services(request).prompts.to_dict())


async def put_prompts(request: Request) -> Response:
    state = services(request)
    body = await _json_body(request)
    if isinstance(body, JSONResponse):
        return body
    try:
        new = update_prompts(state.prompts, body)
    except ConfigError as exc:
        return invalid_prompts(exc)
    try:
        await state.save_prompts(new)
    except OSError as exc:
        return error(500, f"could not save {state.settings.path}: {exc.strerror or exc}")
    return JSONResponse(new.to_dict())


def _sample_count(value: Any) -> int | JSONResponse:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return error(422, "n must be a whole number")
    if not 1 <= n <= 100:
        return error(422, "n must be between 1 and 100")
    return n


async def sample_prompts(request: Request) -> Response:
    """GET: samples of the saved settings. POST {"settings": {...}, "n"}: of unsaved edits (live preview)."""
    state = services(request)
    settings, raw_n = state.prompts, request.query_params.get("n", "5")
    if request.method == "POST":
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            return body
        raw_n = body.get("n", raw_n)
        try:
            settings = update_prompts(settings, body.get("settings") or {})
        except ConfigError as exc:
            return invalid_prompts(exc)
    n = _sample_count(raw_n)
    if isinstance(n, JSONResponse):
        return n
    return JSONResponse({"prompts": [prompt.text for prompt in prompt_composer.sample(settings, n)]})


def generator(state: Services) -> Generator | JSONResponse:
    """The engine, or 503 when another process runs the generator for this data directory."""
    if state.engine is None:
        return error(503, state.generator_elsewhere or "the generator is not running")
    return state.engine


async def refill(request: Request) -> Response:
    state = services(request)
    body = await _json_body(request)
    if isinstance(body, JSONResponse):
        return body
    names = body.get("buckets")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        return error(422, "buckets must be a list of bucket names, e.g. [\"unique\"]")
    if names is not None:
        for name in names:
            if name not in state.buckets:
                return error(422, f"unknown bucket {name!r}; buckets are unique and fallback")
    engine = generator(state)
    if isinstance(engine, JSONResponse):
        return engine
    try:
        run = engine.refill(names or None)
    except (RunActive, NothingToDo) as exc:
        return error(409, str(exc))
    return JSONResponse({"run": run.to_dict()}, status_code=202)


async def abort(request: Request) -> Response:
    engine = generator(services(request))
    if isinstance(engine, JSONResponse):
        return engine
    try:
        run = engine.abort()
    except NotRunning as exc:
        return error(409, str(exc))
    return JSONResponse({"run": run.to_dict()}, status_code=202)


def admin_routes() -> list[Route]:
    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        return Route(f"/admin/api{path}", owner_only(handler), methods=methods)

    return [
        route("/status", status, ["GET"]),
        route("/events", events, ["GET"]),
        route("/images", images, ["GET"]),
        route("/images/{bucket}/{image_id}", image, ["GET"]),
        route("/prompts", get_prompts, ["GET"]),
        route("/prompts", put_prompts, ["PUT"]),
        route("/prompts/sample", sample_prompts, ["GET", "POST"]),
        route("/refill", refill, ["POST"]),
        route("/abort", abort, ["POST"]),
    ]
