"""The Starlette app: visitors' /avatar, the owner's admin API, and the generator, owned by the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from avatargen.config import Settings
from avatargen.events import EventHub, EventLogHandler
from avatargen.files import private_folder
from avatargen.generator import Generator
from avatargen.gpu import make_provider
from avatargen.notify import Notifier, Sender, Watcher
from avatargen.owner_actions import OwnerActions
from avatargen.redact import RedactingFilter
from avatargen.storage.backend import open_backend
from avatargen.storage.errors import StorageUnavailable
from avatargen.storage.redis.events import EventRelay
from avatargen.tasks import background
from server.admin import admin_api
from server.admin_token import resolve_admin_token
from server.errors import ERROR_HANDLERS
from server.forwarding import RedisDesk, RedisForwarder, SocketForwarder, serving_on_socket
from server.generator_host import GeneratorHost, hosting
from server.metrics import Measured, Tally, counters, metrics_route
from server.services import Services
from server.socket_place import generator_socket
from server.visitor import VisitorService

log = logging.getLogger("avatargen.server")


async def healthz(request: Request) -> Response:
    state: Services | None = getattr(request.app.state, "services", None)
    body: dict[str, Any] = {"status": "ok"}
    if state is not None:
        body.update(generator=state.engine.state if state.engine else "elsewhere",
                    buckets={name: bucket.count() for name, bucket in state.buckets.items()})
    return JSONResponse(body)


async def _say_where_the_generator_runs(host: GeneratorHost) -> None:
    """Log who runs the generator, when start-up found it elsewhere; a Redis that does not answer yet is no
    reason not to start: the host takes the lease once it answers, and meanwhile visitors are served."""
    try:
        holder = await host.seat.holder()
    except StorageUnavailable:
        log.warning("the generator starts here or in another replica once Redis answers; meanwhile this process "
                    "serves visitors (local fallbacks or the placeholder)")
        return
    log.warning("the generator runs in another process (%s); this one serves visitors and forwards the owner's "
                "requests there", holder or "taking over")


def create_app(settings: Settings) -> Starlette:
    """Build the app; nothing starts until the lifespan runs (uvicorn, or a test's lifespan manager)."""
    backend = open_backend(settings)
    visitor = VisitorService(settings, backend.buckets)
    tally = Tally()  # the requests' counts, added to /metrics' counters now and then (server.metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(backend.aclose)
            private_folder(settings.server.data_dir)
            await backend.recover()
            events = EventHub()
            handler = EventLogHandler(events, asyncio.get_running_loop())
            handler.addFilter(RedactingFilter())  # the owner's live log hides URL credentials as the file does
            product_log = logging.getLogger("avatargen")
            if product_log.getEffectiveLevel() > logging.INFO:
                product_log.setLevel(logging.INFO)  # the owner's live log shows what the generator does
            product_log.addHandler(handler)
            stack.callback(product_log.removeHandler, handler)
            ledger = await backend.open_ledger()
            stack.push_async_callback(ledger.aclose)
            token, source = resolve_admin_token(settings)
            actions = OwnerActions(settings, backend.buckets, events, forget=visitor.forget)
            services = Services(settings, backend.buckets, events, ledger, actions, token=token)
            app.state.services = services
            notifier = Notifier(settings.notify, Sender(settings.notify.all_urls()))
            services.notifier = notifier
            await stack.enter_async_context(background(notifier.sender.run(), "notification sender"))
            log.info("data in %s; provider %s; admin token %s", backend.where, settings.gpu.provider, source)
            if source.startswith("generated") and sys.stderr.isatty():
                print(f"\n  admin token (shown once): {token.reveal()}\n", file=sys.stderr)

            internal = Starlette(routes=[admin_api(internal=True)], exception_handlers=ERROR_HANDLERS)
            internal.state.services = services
            redis = backend.redis
            if redis is not None:
                services.forwarder = RedisForwarder(redis)
                await stack.enter_async_context(background(EventRelay(redis, events).run(), "event relay"))
            else:
                services.forwarder = SocketForwarder(generator_socket(settings.server.data_dir))
            stack.push_async_callback(services.forwarder.aclose)

            seat = backend.generator_lease()
            # Among replicas, every machine call waits for the lease confirmed (see GeneratorLease.confirm); a lock
            # file is never lost while this process lives, and its machine calls keep the provider's own timeout.
            fence = seat.confirm if redis is not None else None

            @contextlib.asynccontextmanager
            async def generator() -> AsyncIterator[Generator]:
                """The generator of this process while it holds the seat, answering the other processes."""
                async with contextlib.AsyncExitStack() as held:
                    if settings.gpu.provider == "simulated":
                        from avatargen.simulator import SimulatedGpu  # demo mode only: production never loads it

                        # The simulated machine costs what the owner configured, whichever API says so.
                        simulated = await held.enter_async_context(
                            SimulatedGpu(settings.gpu.simulated, hourly_price=settings.gpu.hourly_cost,
                                         backend=settings.sd.backend))
                        log.info("simulated GPU: %s API at %s, SD server (%s) at %s", simulated.api,
                                 simulated.api_url, settings.sd.backend, simulated.sd_url)
                        provider = simulated.provider(settings.gpu, data_dir=settings.server.data_dir, fence=fence)
                    else:
                        provider = make_provider(settings, fence=fence)
                    engine = Generator(settings, backend.buckets, provider, ledger, events)
                    await engine.start()
                    held.push_async_callback(engine.close)
                    await held.enter_async_context(background(backend.finish_recovery(), "framing"))
                    desk = (background(RedisDesk(redis, internal).run(), "generator desk") if redis is not None
                            else serving_on_socket(internal, generator_socket(settings.server.data_dir)))
                    await held.enter_async_context(desk)
                    watcher = Watcher(settings, lambda: replace(engine.view(), visitors=visitor.status()),
                                      notifier.notify, took_over=host.took_over)
                    await held.enter_async_context(background(watcher.run(), "notifications"))
                    yield engine

            def on_change(engine: Generator | None) -> None:
                services.engine = engine
                if engine is None:
                    services.generator_elsewhere = "the generator runs in another process"

            host = GeneratorHost(seat, generator, on_change=on_change)
            await stack.enter_async_context(hosting(host))
            if services.engine is None:
                await _say_where_the_generator_runs(host)

            allowance = await backend.open_allowance()
            stack.push_async_callback(allowance.aclose)
            faces = await backend.open_faces()
            stack.push_async_callback(faces.aclose)
            await visitor.start(allowance, faces)
            for bucket in backend.buckets.values():
                await stack.enter_async_context(background(bucket.follow(), f"{bucket.name} bucket upkeep"))
            await stack.enter_async_context(background(services.watch_levels(), "bucket levels"))
            await stack.enter_async_context(background(tally.run(), "metrics"))
            # What start-up made lives as long as the process: frozen out of the collector's sight, it is no
            # longer walked by every full collection (50 ms each, a pause visitors see). Collected first, so
            # no garbage is frozen with it.
            gc.collect()
            gc.freeze()
            yield

    # The visitor routes come first: Starlette tries routes in order, and /avatar is the hot path.
    routes = [*visitor.routes(), Route("/healthz", healthz, methods=["GET"]),
              Route("/metrics", metrics_route(counters(), tally), methods=["GET"]), admin_api()]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=ERROR_HANDLERS,
                    middleware=[Middleware(Measured, tally=tally)])
    app.state.visitor = visitor  # its status() says what visitors were spared (for the admin API)
    return app
