"""The owner's admin API: status, live events, images (delete, keep, move, review), prompt settings,
refill and abort.

All of it is one Mount at /admin/api whose middleware (`server.admin_guard.OwnerOnly`) checks the client
address (403) and then the bearer token (401) before any route runs. Handlers return their answer or
raise `HTTPException`; `server.errors` renders every error as `{"error": "..."}` in one place.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, JSONServerSentEvent, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from avatargen import prompts as prompt_composer
from avatargen.api.wire import PROMPT_LIST_MAX, PROMPT_TEXT_MAX, ImageInfo
from avatargen.config import BUCKET_NAMES, ConfigError, update_prompts
from avatargen.generator import AvatarGenerator, NothingToDo, NotRunning, RunActive
from avatargen.owner_actions import Refused
from avatargen.storage.errors import ImageNotFound
from avatargen.storage.models import check_id
from server.admin_guard import OwnerOnly
from server.errors import FieldError, echo
from server.forwarding import GeneratorUnreachable, read_answer
from server.generator_place import GeneratorElsewhere
from server.json_body import json_object
from server.services import Services

HEARTBEAT_SECONDS = 15.0
Handler = Callable[[Request], Awaitable[Response]]
RECONNECT_MS = 2000  # how soon a browser's EventSource reconnects after the stream ends
# How long a stream may take to end by itself once the server shuts down (it takes milliseconds) before it is
# cancelled; well inside uvicorn's graceful shutdown timeout, so the stream always ends properly.
SHUTDOWN_GRACE_SECONDS = 1.0
IMAGES_LIMIT_MAX = 500  # images in one list
SAMPLES_MAX = 100  # sample prompts in one answer
HISTORY_DAYS_MAX = 366  # days of history: a year, leap day included


def services_of(request: Request) -> Services:
    """The services of the process that answers the request (built by the app's lifespan)."""
    return request.app.state.services


def to_generator(handler: Handler, *, stream: bool = False) -> Handler:
    """A route the process that runs the generator answers: forwarded there when that is another process
    (the event stream only where the forwarder streams; else the events are relayed into this one's hub).
    When it cannot be reached, this process answers what it can (the status says why; a refill is 503)."""

    async def answered(request: Request) -> Response:
        place = services_of(request).place
        if not place.forwards(stream=stream):
            return await handler(request)
        try:
            return await place.forward(request, stream=stream)
        except GeneratorUnreachable:  # the place learned why
            return await handler(request)

    return answered


async def status_here(request: Request) -> Response:
    """The status as this process knows it (the generator's own, when it runs here)."""
    return JSONResponse((await services_of(request).status()).to_json())


async def status(request: Request) -> Response:
    """The generator's status (from its process, wherever it runs) with the visitor path's errors of this
    process: each worker or replica serves visitors of its own, and the owner asked this one. So is
    `event_listeners`, the event streams this process's hub feeds now: a count that only grows would be panels
    gone but never let go (the soak benchmark watches it)."""
    answer = await to_generator(status_here)(request)
    if answer.status_code != 200:
        return answer
    visitors = request.app.state.visitor.status()
    gate = {"enabled": services_of(request).settings.review.enabled}  # every process reads the same config
    return JSONResponse({**json.loads(await read_answer(answer)), "visitors": visitors.to_json(), "review": gate,
                         "event_listeners": services_of(request).events.listener_count})


async def events(request: Request) -> Response:
    """The live events as Server-Sent Events, replaying those after `Last-Event-ID` first.

    sse-starlette frames them, sends the heartbeats, and ends the stream as soon as the server starts
    shutting down (so SIGTERM is not held up by an open control panel). The hub bounds what waits for a
    slow client: it loses progress events first and is cut off after that, to catch up when it reconnects.
    """
    hub = services_of(request).events
    raw_last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    try:
        last_id = int(raw_last) if raw_last else None
    except ValueError:
        raise HTTPException(422, f"Last-Event-ID must be an event number, got {echo(raw_last)}") from None
    subscription = hub.subscribe(last_id)  # before answering: the client may rely on seeing what comes next
    shutting_down = anyio.Event()  # set by sse-starlette when the server starts shutting down

    async def stream() -> AsyncIterator[ServerSentEvent]:
        with subscription:
            yield ServerSentEvent(comment=f"connected, last event {hub.last_id}", retry=RECONNECT_MS)
            async for event in subscription.until(shutting_down):
                yield JSONServerSentEvent(event.data, event=event.type, id=str(event.id))

    return EventSourceResponse(stream(), ping=HEARTBEAT_SECONDS, ping_message_factory=heartbeat,
                               shutdown_event=shutting_down, shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
                               background=BackgroundTask(subscription.close), headers={"Cache-Control": "no-cache"})


def heartbeat() -> ServerSentEvent:
    return ServerSentEvent(comment="ping")


def _bucket_name(services: Services, name: str | None, status_code: int) -> str:
    """The bucket named by a request; unknown: 404 in a path, 422 in a parameter."""
    if name is None or name not in services.buckets:
        raise HTTPException(status_code, f"unknown bucket {echo(name)}; buckets are {' and '.join(BUCKET_NAMES)}")
    return name


def listed(request: Request, image: ImageInfo) -> dict[str, Any]:
    """An image in the list: its JSON, and where the server answers with its bytes."""
    url = request.app.url_path_for("admin:image", bucket=image.bucket, image_id=image.id)
    return {**image.to_json(), "url": str(url)}


def whole_number(name: str, value: Any, low: int, high: int) -> int:
    """A whole-number parameter (from the query string or a JSON body) within its bounds, or 422 naming it."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise HTTPException(422, f"{name} must be a whole number, got {echo(value)}") from None
    if not low <= number <= high:
        raise HTTPException(422, f"{name} must be between {low} and {high}, got {number}")
    return number


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise HTTPException(422, f"{name} must be true or false, got {echo(value)}")
    return value in ("true", "1")


async def images(request: Request) -> Response:
    """The newest images of a bucket; `held=true`: those the safety gate held back for review instead."""
    services = services_of(request)
    name = _bucket_name(services, request.query_params.get("bucket", "unique"), 422)
    limit = whole_number("limit", request.query_params.get("limit", "24"), 1, IMAGES_LIMIT_MAX)
    found = await services.actions.images(name, limit, held=_flag(request, "held"))
    return JSONResponse({"images": [listed(request, image) for image in found]})


def _image_target(request: Request) -> tuple[str, str]:
    """The bucket and image id a request's path names: 404 for an unknown bucket or a malformed id."""
    name = _bucket_name(services_of(request), request.path_params["bucket"], 404)
    image_id = request.path_params["image_id"]
    try:
        return name, check_id(image_id)
    except ValueError:
        raise HTTPException(404, f"no image {echo(image_id)} in the {name} bucket") from None


@contextlib.contextmanager
def _answering_for(name: str, image_id: str, where: str = "in") -> Iterator[None]:
    """What an action on one image can meet, as the owner's answer: refused (422) or no such image (404)."""
    try:
        yield
    except Refused as exc:
        raise HTTPException(422, str(exc)) from None
    except (ImageNotFound, FileNotFoundError):
        raise HTTPException(404, f"no image {echo(image_id)} {where} the {name} bucket") from None


async def image(request: Request) -> Response:
    """An image's bytes, published or held back for review."""
    name, image_id = _image_target(request)
    with _answering_for(name, image_id):
        data = await services_of(request).actions.read(name, image_id)
    return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=3600"})


async def delete_image(request: Request) -> Response:
    """Delete an image for good, with its sidecar (published or held back): 204, or 404."""
    name, image_id = _image_target(request)
    with _answering_for(name, image_id):
        await services_of(request).actions.delete(name, image_id)
    return Response(status_code=204)


def _answer(request: Request, image: ImageInfo) -> Response:
    return JSONResponse({"image": listed(request, image)})


async def keep_image(request: Request) -> Response:
    """POST: keep a fallback for good (never retired); DELETE: undo that."""
    name, image_id = _image_target(request)
    with _answering_for(name, image_id):
        kept = await services_of(request).actions.keep(name, image_id, kept=request.method == "POST")
    return _answer(request, kept)


async def move_image(request: Request) -> Response:
    """Move an image into another bucket (`{"to": "fallback"}`), under the same id."""
    name, image_id = _image_target(request)
    to = (await json_object(request)).get("to")
    if not isinstance(to, str):
        raise HTTPException(422, 'to must name the bucket to move the image into, e.g. {"to": "fallback"}')
    with _answering_for(name, image_id):
        moved = await services_of(request).actions.move(name, image_id, to)
    return _answer(request, moved)


async def approve_image(request: Request) -> Response:
    """Publish an image the safety gate held back: it goes to visitors as any new image does."""
    name, image_id = _image_target(request)
    with _answering_for(name, image_id, "held back in"):
        approved = await services_of(request).actions.approve(name, image_id)
    return _answer(request, approved)


def _bounded(changes: Any) -> dict[str, Any]:
    """Prompt changes within the API's limits (a 10 MB subject once made every later edit take seconds),
    or 422 naming the setting and the limit."""
    if not isinstance(changes, dict):
        raise HTTPException(422, "settings must be a JSON object of [prompts] settings")
    for name, value in changes.items():
        texts = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) > PROMPT_LIST_MAX:
            raise FieldError(f"at most {PROMPT_LIST_MAX} entries, got {len(value)}", name)
        longest = max((len(text) for text in texts if isinstance(text, str)), default=0)
        if longest > PROMPT_TEXT_MAX:
            raise FieldError(f"at most {PROMPT_TEXT_MAX} characters per entry, got {longest}", name)
    return changes


def invalid(exc: ConfigError) -> FieldError:
    """422 naming the [prompts] setting at fault by its config name, for the panel to show by its field."""
    return FieldError(exc.message, (exc.key or "").removeprefix("prompts."))


async def get_prompts(request: Request) -> Response:
    return JSONResponse(services_of(request).prompts.current.to_dict())


async def put_prompts(request: Request) -> Response:
    services = services_of(request)
    changes = _bounded(await json_object(request))
    try:
        new = await services.prompts.edit(changes)
    except ConfigError as exc:
        raise invalid(exc) from None
    except OSError as exc:
        raise HTTPException(500, f"could not save {services.settings.path}: {exc.strerror or exc}") from None
    return JSONResponse(new.to_dict())


async def sample_prompts(request: Request) -> Response:
    """GET: samples of the saved settings. POST {"settings": {...}, "n"}: of unsaved edits (live preview)."""
    settings, raw_n = services_of(request).prompts.current, request.query_params.get("n", "5")
    if request.method == "POST":
        body = await json_object(request)
        raw_n = body.get("n", raw_n)
        try:
            settings = update_prompts(settings, _bounded(body.get("settings") or {}))
        except ConfigError as exc:
            raise invalid(exc) from None
    n = whole_number("n", raw_n, 1, SAMPLES_MAX)
    return JSONResponse({"prompts": [prompt.text for prompt in prompt_composer.sample(settings, n)]})


def generator(request: Request) -> AvatarGenerator:
    """The generator, or 503 (saying why) when another process runs it, or none does."""
    try:
        return services_of(request).place.generator()
    except GeneratorElsewhere as exc:
        raise HTTPException(503, str(exc)) from None


async def history(request: Request) -> Response:
    """`?days=30`: the daily spend, billed time and images, and the current (else last) run by the minute."""
    days = whole_number("days", request.query_params.get("days", "30"), 1, HISTORY_DAYS_MAX)
    return JSONResponse((await generator(request).history(days)).to_json())


async def refill(request: Request) -> Response:
    names = (await json_object(request)).get("buckets")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise HTTPException(422, "buckets must be a list of bucket names, e.g. [\"unique\"]")
    for name in names or []:
        _bucket_name(services_of(request), name, 422)
    try:
        run = generator(request).refill(names or None)
    except (RunActive, NothingToDo) as exc:
        raise HTTPException(409, str(exc)) from None
    return JSONResponse({"run": run.view().to_json()}, status_code=202)


async def abort(request: Request) -> Response:
    try:
        run = generator(request).abort()
    except NotRunning as exc:
        raise HTTPException(409, str(exc)) from None
    return JSONResponse({"run": run.view().to_json()}, status_code=202)


def admin_api(*, internal: bool = False) -> Mount:
    """Every admin route under /admin/api, behind the owner check. `internal`: the API the generator's
    process answers forwarded requests with (the owner was checked where they came in, and nothing is
    forwarded again). Images are read where a request comes in (every process reads the same buckets); the
    owner's actions on them are answered by the generator's process, so their events reach every panel."""

    def generators(handler: Handler, *, stream: bool = False) -> Handler:
        return handler if internal else to_generator(handler, stream=stream)

    return Mount("/admin/api", name="admin", middleware=[] if internal else [Middleware(OwnerOnly)], routes=[
        Route("/status", status_here if internal else status, methods=["GET"]),
        Route("/events", generators(events, stream=True), methods=["GET"]),
        Route("/images", images, methods=["GET"]),
        Route("/images/{bucket}/{image_id}", image, methods=["GET"], name="image"),
        Route("/images/{bucket}/{image_id}", generators(delete_image), methods=["DELETE"]),
        Route("/images/{bucket}/{image_id}/keep", generators(keep_image), methods=["POST", "DELETE"]),
        Route("/images/{bucket}/{image_id}/move", generators(move_image), methods=["POST"]),
        Route("/images/{bucket}/{image_id}/approve", generators(approve_image), methods=["POST"]),
        Route("/prompts", generators(get_prompts), methods=["GET"]),
        Route("/prompts", generators(put_prompts), methods=["PUT"]),
        Route("/prompts/sample", generators(sample_prompts), methods=["GET", "POST"]),  # its saved settings
        Route("/history", generators(history), methods=["GET"]),
        Route("/refill", generators(refill), methods=["POST"]),
        Route("/abort", generators(abort), methods=["POST"]),
    ])
