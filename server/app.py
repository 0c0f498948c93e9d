"""The Starlette app and its composition root: `create_app` builds the routes, `lifespan` builds what they
serve with, once per process, and tears it down at shutdown (CONTRIBUTING.md lists what, in which order)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from functools import partial
from typing import Any, Protocol, TypeVar

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from avatargen.config import Secret, Settings
from avatargen.events import EventHub, EventLogHandler
from avatargen.files import private_folder
from avatargen.generator import AvatarGenerator
from avatargen.gpu.api import Fence
from avatargen.gpu.providing import running_provider
from avatargen.notify import Notifier, Sender, Watcher
from avatargen.owner_actions import OwnerActions
from avatargen.redact import RedactingFilter
from avatargen.storage.backend import Backend, open_backend
from avatargen.storage.errors import StorageUnavailable
from avatargen.storage.redis.events import EventRelay
from avatargen.tasks import background
from server.admin import admin_api
from server.admin_token import resolve_admin_token
from server.errors import ERROR_HANDLERS
from server.forwarding import Forwarder, RedisForwarder, RedisForwardReceiver, SocketForwarder, serving_on_socket
from server.generator_host import GeneratorHost, hosting
from server.generator_place import GeneratorPlace
from server.metrics import Measured, Tally, counters, metrics_route
from server.services import Prompts, Services
from server.socket_place import generator_socket
from server.visitor import VisitorService

log = logging.getLogger("avatargen.server")


def create_app(settings: Settings) -> Starlette:
    """Build the app; nothing starts until the lifespan runs (uvicorn, or a test's lifespan manager)."""
    backend = open_backend(settings)
    visitor = VisitorService(settings, backend.buckets)
    tally = Tally()  # the requests' counts, added to /metrics' counters now and then (server.metrics)
    # The visitor routes come first: Starlette tries routes in order, and /avatar is the hot path.
    routes = [*visitor.routes(), Route("/healthz", healthz, methods=["GET"]),
              Route("/metrics", metrics_route(counters(), tally), methods=["GET"]), admin_api()]
    app = Starlette(routes=routes, exception_handlers=ERROR_HANDLERS, middleware=[Middleware(Measured, tally=tally)],
                    lifespan=partial(lifespan, settings=settings, backend=backend, visitor=visitor, tally=tally))
    app.state.visitor = visitor  # its status() says what visitors were spared (for the admin API)
    return app


@contextlib.asynccontextmanager
async def lifespan(app: Starlette, *, settings: Settings, backend: Backend, visitor: VisitorService,
                   tally: Tally) -> AsyncIterator[None]:
    """Build the process's services once, in order (each step uses only what is built before it), serve, and
    tear them down in reverse order at shutdown: the generator stops (its machine off) before its storage."""
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(backend.aclose)
        private_folder(settings.server.data_dir)
        await backend.recover()
        events = EventHub()
        stack.enter_context(owners_live_log(events))
        ledger = await _closed_at_exit(stack, backend.open_ledger())
        token = admin_token(settings, backend)
        notifier = Notifier(settings.notify, Sender(settings.notify.all_urls()))
        await stack.enter_async_context(background(notifier.sender.run(), "notification sender"))
        place = GeneratorPlace(await stack.enter_async_context(forwarding(settings, backend, events)),
                               backend.generator_lease())
        actions = OwnerActions(settings, backend.buckets, events, forget=visitor.forget)
        services = Services(settings, backend.buckets, events, ledger, actions, token, notifier, place,
                            Prompts(settings, place))
        app.state.services = services
        await stack.enter_async_context(hosting_the_generator(services, backend, visitor))
        await visitor.start(await _closed_at_exit(stack, backend.open_allowance()),
                            await _closed_at_exit(stack, backend.open_faces()))
        await stack.enter_async_context(upkeep(services, backend, tally))
        freeze_what_lasts()
        yield


async def healthz(request: Request) -> Response:
    services: Services | None = getattr(request.app.state, "services", None)
    body: dict[str, Any] = {"status": "ok"}
    if services is not None:
        here = services.place.here
        body.update(generator=here.state if here else "elsewhere",
                    buckets={name: bucket.count() for name, bucket in services.buckets.items()})
    return JSONResponse(body)


class _Closing(Protocol):
    async def aclose(self) -> None: ...


Opened = TypeVar("Opened", bound=_Closing)


async def _closed_at_exit(stack: contextlib.AsyncExitStack, opening: Awaitable[Opened]) -> Opened:
    """What `opening` opens, closed when the stack unwinds."""
    opened = await opening
    stack.push_async_callback(opened.aclose)
    return opened


@contextlib.contextmanager
def owners_live_log(events: EventHub) -> Iterator[None]:
    """The product's log records also go to the owner's live log (the event stream), credentials in URLs
    hidden as in the log file, at INFO at least: the live log shows what the generator does."""
    handler = EventLogHandler(events, asyncio.get_running_loop())
    handler.addFilter(RedactingFilter())
    product_log = logging.getLogger("avatargen")
    if product_log.getEffectiveLevel() > logging.INFO:
        product_log.setLevel(logging.INFO)
    product_log.addHandler(handler)
    try:
        yield
    finally:
        product_log.removeHandler(handler)


def admin_token(settings: Settings, backend: Backend) -> Secret:
    """The admin token, with where it came from in the log (a generated one shown once on a terminal)."""
    token, source = resolve_admin_token(settings)
    log.info("data in %s; provider %s; admin token %s", backend.where, settings.gpu.provider, source)
    if source.startswith("generated") and sys.stderr.isatty():
        print(f"\n  admin token (shown once): {token.reveal()}\n", file=sys.stderr)
    return token


@contextlib.asynccontextmanager
async def forwarding(settings: Settings, backend: Backend, events: EventHub) -> AsyncIterator[Forwarder]:
    """How the owner's requests reach the generator when another process runs it: over the generator
    worker's socket, or through Redis among replicas (whose events the relay brings into this one's hub)."""
    async with contextlib.AsyncExitStack() as stack:
        forwarder: Forwarder
        if backend.redis is None:
            forwarder = SocketForwarder(generator_socket(settings.server.data_dir))
        else:
            await stack.enter_async_context(background(EventRelay(backend.redis, events).run(), "event relay"))
            forwarder = RedisForwarder(backend.redis)
        stack.push_async_callback(forwarder.aclose)
        yield forwarder


@contextlib.asynccontextmanager
async def hosting_the_generator(services: Services, backend: Backend,
                                visitor: VisitorService) -> AsyncIterator[None]:
    """The generator runs here while this process holds its lease, and stands by otherwise; the block starts
    once start-up knows which (see server.generator_host). The place hears of every move."""
    lease = services.place.lease
    # Among replicas, every machine call waits for the lease confirmed (see GeneratorLease.confirm); a lock
    # file is never lost while this process lives, and its machine calls keep the provider's own timeout.
    fence = lease.confirm if backend.redis is not None else None
    factory = partial(running_generator, services=services, backend=backend, visitor=visitor, fence=fence,
                      takeover=lease.takeover)
    host = GeneratorHost(lease, factory, on_change=services.place.moved)
    async with hosting(host):
        if services.place.here is None:
            await _say_where_the_generator_runs(host)
        yield


@contextlib.asynccontextmanager
async def running_generator(took_over: bool, *, services: Services, backend: Backend, visitor: VisitorService,
                            fence: Fence | None, takeover: float) -> AsyncIterator[AvatarGenerator]:
    """The generator of this process while it holds the lease, with what only its process does: the provider
    (the simulated GPU in demo mode), the framing left by recovery, answering the other processes' requests,
    and watching for what to tell the owner."""
    settings = services.settings
    async with contextlib.AsyncExitStack() as held:
        provider = await held.enter_async_context(running_provider(settings, fence=fence))
        generator = AvatarGenerator(settings, backend.buckets, provider, services.ledger, services.events,
                                    takeover=takeover)
        await generator.start()
        held.push_async_callback(generator.close)
        await held.enter_async_context(background(backend.finish_recovery(), "framing"))
        await held.enter_async_context(answering_forwarded_requests(services, backend))
        watcher = Watcher(settings, lambda: replace(generator.view(), visitors=visitor.status()),
                          services.notifier.notify, took_over=took_over)
        await held.enter_async_context(background(watcher.run(), "notifications"))
        yield generator


def answering_forwarded_requests(services: Services, backend: Backend) -> AbstractAsyncContextManager[Any]:
    """The requests the other processes forward to the generator, answered by the admin API without the
    owner check (done where they came in): on the generator's socket, or taken from Redis."""
    internal = Starlette(routes=[admin_api(internal=True)], exception_handlers=ERROR_HANDLERS)
    internal.state.services = services
    if backend.redis is not None:
        return background(RedisForwardReceiver(backend.redis, internal).run(), "forwarded requests")
    return serving_on_socket(internal, generator_socket(services.settings.server.data_dir))


async def _say_where_the_generator_runs(host: GeneratorHost) -> None:
    """Log who runs the generator, when start-up found it elsewhere; a Redis that does not answer yet is no
    reason not to start: the host takes the lease once it answers, and meanwhile visitors are served."""
    try:
        holder = await host.lease.holder()
    except StorageUnavailable:
        log.warning("the generator starts here or in another replica once Redis answers; meanwhile this process "
                    "serves visitors (local fallbacks or the placeholder)")
        return
    log.warning("the generator runs in another process (%s); this one serves visitors and forwards the owner's "
                "requests there", holder or "taking over")


@contextlib.asynccontextmanager
async def upkeep(services: Services, backend: Backend, tally: Tally) -> AsyncIterator[None]:
    """What every process keeps doing in the background: each bucket follows its storage, the owner's gauges
    follow the bucket levels, the requests' counts reach /metrics."""
    async with contextlib.AsyncExitStack() as stack:
        for bucket in backend.buckets.values():
            await stack.enter_async_context(background(bucket.follow(), f"{bucket.name} bucket upkeep"))
        await stack.enter_async_context(background(services.watch_levels(), "bucket levels"))
        await stack.enter_async_context(background(tally.run(), "metrics"))
        yield


def freeze_what_lasts() -> None:
    """What start-up made lives as long as the process: frozen out of the collector's sight, it is no longer
    walked by every full collection (50 ms each, a pause visitors see). Collected first, so no garbage is
    frozen with it."""
    gc.collect()
    gc.freeze()
